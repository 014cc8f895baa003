"""Benchmark: where the capture forward's time goes on MLX's CPU backend.

Runs SmolLM2's blocks up to `--layer` (8 x 256 tokens of WikiText-2, float32) one sub-operation at
a time, evaluating after each, and prints the wall time per kind of operation (projections, the
fused attention, SwiGLU, norms, RoPE), the forward's tokens/s and the matmul share. Then the
per-element cost of the elementwise ops that dominate it: `exp`, softmax and SwiGLU at the
forward's shapes, beside an addition (memory-bound) and a float32 matmul of the MLP's shape.

    python benchmarks/capture_profile.py [--layer 15] [--repeats 3]

Evaluating op by op serializes what MLX would otherwise schedule together, so the total is a
little above the plain forward's time (compare trace_capture.py); the shares are the point.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

from mlxterp.platform import use_fast_blas  # noqa: E402

use_fast_blas()  # on Linux, re-executes with OpenBLAS preloaded

import mlx.core as mx  # noqa: E402
import mlx.nn as nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from trace_capture import token_batch  # noqa: E402

from mlxterp import InterpretableModel  # noqa: E402

MATMULS = ("q/k/v projections", "o projection", "gate/up projections", "down projection")


def profile_blocks(inner, tokens: mx.array, layers: int, times: collections.Counter) -> None:
    """A llama-family forward through `layers` blocks, timing each sub-operation into `times`."""

    def timed(name, value):
        start = time.perf_counter()
        mx.eval(value)
        times[name] += time.perf_counter() - start
        return value

    h = inner.embed_tokens(tokens)
    for block in inner.layers[:layers]:
        attn, mlp = block.self_attn, block.mlp
        x = timed("RMS norms", block.input_layernorm(h))
        batch, length, _ = x.shape

        def heads(proj, n):
            return timed("q/k/v projections", proj(x)).reshape(batch, length, n, -1).transpose(0, 2, 1, 3)

        q, k, v = heads(attn.q_proj, attn.n_heads), heads(attn.k_proj, attn.n_kv_heads), heads(attn.v_proj, attn.n_kv_heads)
        q, k = timed("RoPE", attn.rope(q)), timed("RoPE", attn.rope(k))
        o = timed("attention (fused SDPA)", mx.fast.scaled_dot_product_attention(q, k, v, scale=attn.scale, mask="causal"))
        o = timed("o projection", attn.o_proj(o.transpose(0, 2, 1, 3).reshape(batch, length, -1)))
        h = timed("residual adds", h + o)
        x = timed("RMS norms", block.post_attention_layernorm(h))
        gate, up = timed("gate/up projections", mlp.gate_proj(x)), timed("gate/up projections", mlp.up_proj(x))
        act = timed("SwiGLU", nn.silu(gate) * up)
        h = timed("residual adds", h + timed("down projection", mlp.down_proj(act)))


def per_element_ns(fn, *args, repeats: int = 5) -> float:
    mx.eval(fn(*args))
    start = time.perf_counter()
    for _ in range(repeats):
        mx.eval(fn(*args))
    return (time.perf_counter() - start) / repeats / args[0].size * 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layer", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    model = InterpretableModel.default()
    tokens = token_batch(model, 8, 256)
    inner = model.model.model
    if not all(hasattr(b, "mlp") and hasattr(b.mlp, "gate_proj") for b in inner.layers):
        raise SystemExit("this profile follows llama-family blocks (SmolLM2)")
    times: collections.Counter = collections.Counter()
    profile_blocks(inner, tokens, args.layer + 1, collections.Counter())  # warm-up
    for _ in range(args.repeats):
        profile_blocks(inner, tokens, args.layer + 1, times)
    total = sum(times.values()) / args.repeats
    print(f"{tokens.size} tokens per forward, blocks 0..{args.layer}, {mx.default_device()}, MLX {mx.__version__}")
    print(f"op by op: {total:.2f} s per forward = {tokens.size / total:,.0f} tokens/s")
    for name, seconds in times.most_common():
        print(f"  {name:24s} {seconds / args.repeats:6.3f} s  {100 * seconds / args.repeats / total:5.1f}%")
    matmul = sum(times[n] for n in MATMULS) / args.repeats
    print(f"  all matmuls together    {matmul:6.3f} s  {100 * matmul / total:5.1f}%")

    heads = inner.layers[0].self_attn.n_heads
    scores = mx.random.normal((8, heads, 256, 256))
    gate, up = mx.random.normal((8, 256, 1536)), mx.random.normal((8, 256, 1536))
    a, w = mx.random.normal((2048, 576)), mx.random.normal((576, 1536))
    mx.eval(scores, gate, up, a, w)
    print("per element (ns), at the forward's shapes:")
    print(f"  x + 1                   {per_element_ns(lambda x: x + 1, scores):6.2f}")
    print(f"  exp                     {per_element_ns(mx.exp, scores):6.2f}")
    print(f"  softmax (last axis)     {per_element_ns(lambda x: mx.softmax(x, axis=-1, precise=True), scores):6.2f}")
    print(f"  silu(gate) * up         {per_element_ns(lambda g, u: nn.silu(g) * u, gate, up):6.2f}")
    start = time.perf_counter()
    for _ in range(5):
        mx.eval(a @ w)
    rate = 5 * 2 * a.shape[0] * a.shape[1] * w.shape[1] / (time.perf_counter() - start) / 1e9
    print(f"float32 (2048x576)@(576x1536) matmul: {rate:,.0f} GFLOP/s")


if __name__ == "__main__":
    main()
