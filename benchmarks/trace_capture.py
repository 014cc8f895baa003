"""Benchmark: tokens/s of a plain mlx-lm forward vs trace() capturing one layer's residual stream.

Prints, in one run on the default model (SmolLM2-135M, float32): the plain full forward, the
plain forward truncated by hand at the layer, trace() saving that layer (which stops the
forward there), and the same trace as the activation store runs it (inside
`numpy_exp_forward`, which on x86 CPUs computes softmax and SwiGLU with numpy's exp).
Targets: trace >= plain full forward; trace overhead < 5% over the truncated one.

    python benchmarks/trace_capture.py [--layer 15] [--batch 8] [--seq 256] [--repeats 5]
    python benchmarks/trace_capture.py --trace-only    # the trace alone, beside benchmarks/hf_capture.py
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path


from mlxterp.platform import use_fast_blas  # noqa: E402

use_fast_blas()  # on Linux, re-executes with OpenBLAS preloaded

import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402

from mlxterp import InterpretableModel  # noqa: E402
from mlxterp.fast_forward import numpy_exp_forward, numpy_exp_pays  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "wikitext-2-raw-test.txt"


def token_batch(model, batch: int, seq: int) -> mx.array:
    text = DATA.read_text() if DATA.exists() else " ".join(model.tokenizer.decode(list(range(1000, 3000))) for _ in range(3))
    ids = model.encode(text)[: batch * seq]
    return mx.array(np.asarray(ids, dtype=np.int32).reshape(batch, seq))


def capture_difference(model, tokens: mx.array, layer: int) -> float:
    """Largest |store's capture - trace()| token norm at `layer`, over the median token norm."""

    def capture():
        with model.trace(tokens, default_capture=False):
            saved = model.layers[layer].output.save()
        return np.array(saved.value)[:, 4:]  # the attention sinks left out

    plain = capture()
    with numpy_exp_forward(model.model):
        fast = capture()
    return float(np.linalg.norm(fast - plain, axis=-1).max() / np.median(np.linalg.norm(plain, axis=-1)))


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layer", type=int, default=15)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--trace-only", action="store_true",
                        help="time only trace() (--warmup, then --repeats), as hf_capture.py times transformers")
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args()

    model = InterpretableModel.default()
    tokens = token_batch(model, args.batch, args.seq)
    n = tokens.size
    inner = model.model.model

    def plain_full():
        mx.eval(model.model(tokens))

    def plain_truncated():
        h = inner.embed_tokens(tokens)
        for block in inner.layers[: args.layer + 1]:
            h = block(h, "causal", cache=None)
        mx.eval(h)

    def traced():
        with model.trace(tokens, default_capture=False):
            model.layers[args.layer].output.save()

    def store_capture():
        with numpy_exp_forward(model.model):
            traced()

    if args.trace_only:
        # The two alternate, one forward each per round, so the machine's load falls on both alike.
        times = {"trace()": [], "trace() as the activation store runs it": []}
        for i in range(args.warmup + args.repeats):
            for name, fn in zip(times, (traced, store_capture)):
                start = time.perf_counter()
                fn()
                if i >= args.warmup:
                    times[name].append(time.perf_counter() - start)
        for name, ts in times.items():
            print(f"{name} saving layer {args.layer}: {n / statistics.median(ts):,.0f} tokens/s (median of "
                  f"{args.repeats}; min {n / max(ts):,.0f}, max {n / min(ts):,.0f}; {n} tokens per forward)")
        ratio = statistics.median(times["trace()"]) / statistics.median(times["trace() as the activation store runs it"])
        print(f"store's capture / trace(): {ratio:.2f}x (numpy exp {'on' if numpy_exp_pays() else 'off: not an x86 CPU'})")
        print(f"their difference at layer {args.layer}: {capture_difference(model, tokens, args.layer):.1e} of the "
              "median token norm (largest over tokens, the first 4 positions left out)")
        return

    results = {}
    for name, fn in [("plain forward (all layers + logits)", plain_full),
                     (f"plain forward truncated at layer {args.layer}", plain_truncated),
                     (f"trace() saving layer {args.layer} (stops there)", traced),
                     ("the same, as the activation store runs it", store_capture),
                     (f"plain forward truncated at layer {args.layer} (again)", plain_truncated)]:
        results[name] = n / timed(fn, args.repeats)
        print(f"{name:55s} {results[name]:10,.0f} tokens/s")
    truncated = statistics.mean([v for k, v in results.items() if "truncated" in k])
    trace_rate = results[f"trace() saving layer {args.layer} (stops there)"]
    print(f"trace vs plain full forward: {trace_rate / results['plain forward (all layers + logits)']:.2f}x")
    print(f"trace overhead over truncated forward: {100 * (truncated / trace_rate - 1):+.1f}%")
    print(f"({n} tokens per forward: batch {args.batch} x seq {args.seq}; {sys.platform}, "
          f"device {mx.default_device()})")


if __name__ == "__main__":
    main()
