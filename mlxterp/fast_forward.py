"""Forwards that are never differentiated (capture, evaluation, the model scan), faster on x86 CPUs.

MLX 0.32's x86 CPU build evaluates `exp` as scalar code: ~25 ns an element, against ~0.8 ns for
numpy's SIMD `exp` on the same core. A SmolLM2 forward spends ~70% of its time in the two places
that call it, the fused attention's softmax and SwiGLU's SiLU (benchmarks/README.md, "Where the
forward's time goes"). Inside `numpy_exp_forward(lm)` those two run through numpy: attention is
`attention.explicit_attention` with a numpy softmax, SwiGLU a numpy SiLU; the rest of the forward
(projections, norms, RoPE) stays MLX. The results equal the fused forward's to float32 round-off
(tests/test_fast_forward.py).

Values that pass through numpy carry no gradient, so only code that never differentiates the
forward enters it (the activation store's capture, evaluation, the dashboard's model scan).
Elsewhere (a Mac, MLX's GPU backends, non-float32 models, `MLXTERP_NUMPY_EXP=0`) the context
changes nothing.
"""

from __future__ import annotations

import os
import platform
import sys
from contextlib import contextmanager
from typing import Iterator

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from .attention import SDPA_MODULES, explicit_attention, family_of


def numpy_exp_pays() -> bool:
    """True where the numpy path is faster: MLX computing on the CPU of an x86-64 machine."""
    if os.environ.get("MLXTERP_NUMPY_EXP", "1") == "0":
        return False
    return mx.default_device() == mx.cpu and platform.machine().lower() in ("x86_64", "amd64")


def numpy_softmax(scores: mx.array) -> mx.array:
    """Softmax over the last axis of float32 `scores`, computed by numpy (no gradient)."""
    s = np.array(scores, dtype=np.float32)
    s -= s.max(axis=-1, keepdims=True)
    np.exp(s, out=s)
    s /= s.sum(axis=-1, keepdims=True)
    return mx.array(s)


def log_softmax(x: mx.array) -> mx.array:
    """log softmax over the last axis in float32: numpy's where that pays (then no gradient), else MLX's."""
    x = x.astype(mx.float32)
    if not numpy_exp_pays():
        return x - mx.logsumexp(x, axis=-1, keepdims=True)
    a = np.array(x, dtype=np.float32)
    a -= a.max(axis=-1, keepdims=True)
    a -= np.log(np.exp(a).sum(axis=-1, keepdims=True))
    return mx.array(a)


def exp(x: mx.array) -> mx.array:
    """Elementwise exp: numpy's where that pays (then no gradient), else MLX's."""
    return mx.array(np.exp(np.array(x))) if numpy_exp_pays() else mx.exp(x)


def numpy_swiglu(gate: mx.array, x: mx.array) -> mx.array:
    """silu(gate) * x with the SiLU computed by numpy (no gradient); float32 `gate`."""
    g = np.array(gate, dtype=np.float32)
    with np.errstate(over="ignore"):  # exp(-g) = inf for very negative g gives silu = -0, as it should
        t = np.exp(-g)
    t += 1.0
    g /= t
    return mx.array(g) * x


def _fast_sdpa(fused):
    def sdpa(queries, keys, values, cache=None, scale=1.0, mask=None, sinks=None):
        if sinks is not None or hasattr(cache, "bits") or queries.dtype != mx.float32:
            return fused(queries, keys, values, cache=cache, scale=scale, mask=mask, sinks=sinks)
        return explicit_attention(queries, keys, values, scale, mask, softmax=numpy_softmax)

    return sdpa


def _fast_swiglu(fused):
    def swiglu(gate, x):
        if gate.dtype != mx.float32:
            return fused(gate, x)
        return numpy_swiglu(gate, x)

    return swiglu


_REPLACEMENTS = {"scaled_dot_product_attention": _fast_sdpa, "swiglu": _fast_swiglu}


@contextmanager
def numpy_exp_forward(lm: nn.Module) -> Iterator[None]:
    """Run `lm`'s attention softmax and SwiGLU through numpy while inside (where that pays).

    Swaps the functions in the mlx-lm model files of `lm`'s modules (the files whose attention
    `attention.py` recomputes exactly), and puts them back on exit. Not for forwards that are
    differentiated, nor for another thread running the same model family meanwhile.
    """
    if not numpy_exp_pays():
        yield
        return
    sources = {sys.modules[type(m).__module__] for _, m in lm.named_modules()
               if type(m).__module__.startswith("mlx_lm.models.") and family_of(m) in SDPA_MODULES}
    swapped = [(source, name, getattr(source, name)) for source in sources for name in _REPLACEMENTS
               if hasattr(source, name)]
    for source, name, fused in swapped:
        setattr(source, name, _REPLACEMENTS[name](fused))
    try:
        yield
    finally:
        for source, name, fused in reversed(swapped):
            setattr(source, name, fused)
