"""Time one examples+statistics pass over a dataset against the model's forward alone.

    python benchmarks/feature_scan.py [--n-tokens 100000] [--layer 10] [--expansion 16] [--k 32] [--records]

Uses the default model and the bundled corpus with a random TopK SAE (the pass's cost does not
depend on training). Prints seconds for: tokenizing and packing the texts, the forward to the
hook point only, forward + SAE encode, and the full pass (top examples + lower-band samples +
statistics for every feature). With --records, also the dashboard records of every feature
(logit lens, similar features, examples as dicts).
"""

from __future__ import annotations

import argparse
import time

from mlxterp.platform import use_fast_blas  # noqa: E402

use_fast_blas()  # on Linux, re-executes with OpenBLAS preloaded

import mlx.core as mx  # noqa: E402

from mlxterp import InterpretableModel  # noqa: E402
from mlxterp.data import load_texts  # noqa: E402
from mlxterp.features.examples import ExampleCollector, ExampleSet  # noqa: E402
from mlxterp.features.report import feature_records  # noqa: E402
from mlxterp.activations import ContextSettings, pack_texts  # noqa: E402
from mlxterp.features.scan import scan  # noqa: E402
from mlxterp.features.stats import StatsCollector  # noqa: E402
from mlxterp.sae.model import SAE  # noqa: E402


class _Null:
    def update(self, batch) -> None:
        pass


def _forward_only(model, contexts, path, batch_size) -> None:
    for start in range(0, len(contexts.tokens), batch_size):
        with model.trace(mx.array(contexts.tokens[start : start + batch_size]), default_capture=False):
            saved = model.module(path).output.save()
        mx.eval(saved.value)


def _timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-tokens", type=int, default=100_000)
    parser.add_argument("--layer", type=int, default=10)
    parser.add_argument("--expansion", type=int, default=16)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--records", action="store_true", help="also time every feature's dashboard record")
    args = parser.parse_args()

    model = InterpretableModel.default()
    sae = SAE(model.d_model, model.d_model * args.expansion, k=args.k)
    sae.metadata.update(layer=args.layer, component="output", model_name=model.name)
    options = dict(n_tokens=args.n_tokens, contexts_per_forward=args.batch_size)
    texts = load_texts(None)
    n = sae.d_hidden

    contexts, pack_s = _timed(lambda: pack_texts(model, texts, ContextSettings(), args.n_tokens))
    _forward_only(model, pack_texts(model, texts[:4], ContextSettings(), 2048), model.hook_point(args.layer).path, 8)  # warm-up
    _, forward_s = _timed(lambda: _forward_only(model, contexts, model.hook_point(args.layer).path, args.batch_size))
    _, encode_s = _timed(lambda: scan(sae, model, texts, [_Null()], **options))
    collectors = [ExampleCollector(n, 20, 64, 16, 8, seed=0), StatsCollector(n)]
    scanned, full_s = _timed(lambda: scan(sae, model, texts, collectors, **options))

    print(f"{contexts.n_tokens} tokens, {n} features (k={args.k}), layer {args.layer}, batch {args.batch_size}x256")
    print(f"tokenize + pack:                      {pack_s:7.1f} s")
    print(f"forward to hook point:                {forward_s:7.1f} s")
    print(f"pack + forward + SAE encode:          {encode_s:7.1f} s")
    print(f"full pass (examples + stats, all):    {full_s:7.1f} s   ({full_s / forward_s:.2f}x the forward)")
    if args.records:
        examples = ExampleSet(collectors[0], scanned, list(range(n)), model)
        stats = collectors[1].result(list(range(n)))
        records, records_s = _timed(lambda: feature_records(model, sae, list(range(n)), stats, examples))
        print(f"dashboard records of all {len(records)} features: {records_s:7.1f} s")


if __name__ == "__main__":
    main()
