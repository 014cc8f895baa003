"""Benchmark: SAEs on 1, 4 and all 30 layers of SmolLM2 from one forward per batch
(`model.train_saes`) next to the sum of single-layer runs (`model.train_sae`) over the same tokens.

Every run trains TopK SAEs (16x expansion, k 32) on the MLP output over the same first
`--tokens` tokens of WikiText-2 (test split, ../shared/data), one epoch, no validation, no
cache, all in this one process (so the machine's load is shared alike). Prints, per layer set,
the joint run's wall time and tokens/s (tokens x SAEs / s) beside the sum of the single-layer
runs' wall times, and writes them as JSON.

    python benchmarks/multi_layer.py [--tokens 1024] [--batch-size 256] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from mlxterp.platform import use_fast_blas  # noqa: E402

use_fast_blas()  # on Linux, re-executes with OpenBLAS preloaded

from mlxterp import InterpretableModel  # noqa: E402
from mlxterp.io_utils import atomic_write_text  # noqa: E402
from mlxterp.sae.config import SAEConfig  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sae_smollm2 import WIKITEXT, wikitext_articles  # noqa: E402


def first_chars(texts: list[str], n_chars: int) -> list[str]:
    """The first texts holding at least `n_chars` characters (so every run tokenizes only what it uses)."""
    out, have = [], 0
    for text in texts:
        out.append(text)
        have += len(text)
        if have >= n_chars:
            break
    return out


def write_json(folder: str, name: str, results: dict) -> None:
    """Write `results` to `folder`/`name` (atomically), creating the folder."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(folder) / name, json.dumps(results, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--sets", nargs="+", default=["1", "4", "30"], help="which layer sets to run")
    parser.add_argument("--no-single", action="store_true", help="time the joint runs only")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    model = InterpretableModel.default()
    texts = first_chars(wikitext_articles(WIKITEXT), 8 * args.tokens)
    config = SAEConfig(batch_size=args.batch_size, validation_split=0.0, checkpoint_every=None, log_every=1000)
    n = model.n_layers
    sets = {"1": [n // 2], "4": [n // 5, 2 * n // 5, 3 * n // 5, 4 * n // 5], str(n): list(range(n))}
    sets = {name: layers for name, layers in sets.items() if name in args.sets}

    def timed(fn) -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    model.train_sae(n // 2, texts, "mlp", config, max_tokens=args.tokens, progress=False)  # warm-up
    single: dict[int, float] = {}
    results = {"tokens": args.tokens, "batch_size": args.batch_size, "d_hidden": 16 * model.d_model, "k": config.k,
               "single_layer_s": single, "sets": {}}
    # The small sets first, each right after its single-layer runs, so a cut-short run still compares them.
    for name, layers in sets.items():
        for layer in [] if args.no_single else layers:
            if layer not in single:
                single[layer] = timed(lambda: model.train_sae(layer, texts, "mlp", config, max_tokens=args.tokens,
                                                              progress=False))
                print(f"single layer {layer}: {single[layer]:.1f} s", flush=True)
        patterns = [f"layers.{layer}.mlp" for layer in layers]
        joint = timed(lambda: model.train_saes(patterns, texts, config, max_tokens=args.tokens, progress=False))
        results["sets"][name] = {"layers": layers, "joint_s": joint,
                                 "joint_tokens_per_s": args.tokens * len(layers) / joint}
        rate = args.tokens * len(layers) / joint
        line = f"{len(layers):>2} layers: one forward {joint:7.1f} s ({rate:7.1f} tok/s x SAEs)"
        if not args.no_single:
            singles = sum(single[layer] for layer in layers)
            results["sets"][name].update(sum_single_s=singles, single_tokens_per_s=args.tokens * len(layers) / singles)
            line += (f" | sum of single-layer runs {singles:7.1f} s ({args.tokens * len(layers) / singles:7.1f}) "
                     f"| ratio {singles / joint:.2f}x")
        print(line, flush=True)
        write_json(args.out, f"multi_layer{'_joint' if args.no_single else ''}.json", results)


if __name__ == "__main__":
    main()
