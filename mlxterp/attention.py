"""Attention recomputed explicitly, so that its patterns and per-head outputs can be saved and edited.

mlx-lm's attention modules call the fused `scaled_dot_product_attention`, which never forms the
probabilities. When a trace asks for a pattern, the queries/keys or the per-head outputs of an
attention module, that module's call runs with the fused function swapped for `explicit_attention`
(softmax(q k^T * scale + mask) @ v, with grouped KV heads repeated), so the pattern is the one the
forward uses. RoPE and query/key norms run in the module's own code, before the swap point; masks
(causal, sliding window) are the ones the model passes. Gemma-2 computes attention inline (with
logit soft-capping), so its call is rewritten here. Every other call stays on the fused kernel.
"""

from __future__ import annotations

import sys
from typing import Callable

import mlx.core as mx
import mlx.nn as nn

from .errors import TraceError

# Kinds of values an attention module offers besides its input and output. Only "heads"
# (batch, seq, heads, head_dim) has the token axis at 1, so only it can be edited.
ATTENTION_KINDS = ("pattern", "heads", "queries", "keys")
SAVE_ONLY_KINDS = ("pattern", "queries", "keys")
# mlx_lm.models.<module> whose Attention calls base.scaled_dot_product_attention, tested in
# tests/test_attention.py against the fused forward (mistral uses llama's, gemma3 gemma3_text's).
SDPA_MODULES = ("llama", "qwen2", "qwen3", "gemma", "gemma3_text", "phi3", "olmo2", "gpt2", "gpt_neox")
SUPPORTED = "llama, mistral, qwen2, qwen3, gemma, gemma2, gemma3, phi3, olmo2, gpt2, gpt_neox"

Capture = Callable[[str, mx.array], mx.array]


def family_of(module: nn.Module) -> str:
    """The mlx-lm model file an attention module comes from, e.g. "llama" (also for mistral)."""
    return type(module).__module__.rpartition(".")[2]


def check_supported(module: nn.Module, path: str) -> None:
    """Raise a TraceError unless mlxterp can recompute the attention of `module` exactly."""
    source = type(module).__module__
    if not source.startswith("mlx_lm.models.") or family_of(module) not in SDPA_MODULES + ("gemma2",):
        raise TraceError(
            f"attention patterns and per-head outputs are not available for {path!r} "
            f"({type(module).__name__} from {source}): mlxterp recomputes attention exactly for the "
            f"mlx-lm families {SUPPORTED}. Save the attention module's output instead "
            f"(model.module({path!r}).output.save())"
        )


def n_heads(module: nn.Module) -> int:
    """The number of query heads of a supported attention module."""
    for name in ("n_heads", "n_head", "num_attention_heads"):
        value = getattr(module, name, None)
        if isinstance(value, int):
            return value
    raise TraceError(f"cannot tell how many heads {type(module).__name__} has")


def _precise_softmax(scores: mx.array) -> mx.array:
    return mx.softmax(scores, axis=-1, precise=True)


def explicit_attention(queries, keys, values, scale: float, mask, capture: Capture | None = None,
                       softcap: float | None = None, softmax=_precise_softmax) -> mx.array:
    """softmax(q k^T * scale + mask) @ v for q (B, H, L, D) and k, v (B, H_kv, S, D) -> (B, H, L, D).

    `capture(kind, array)` sees (and may replace) "queries", "keys", "pattern" (B, H, L, S) and
    "heads" (B, L, H, D). `mask` is what mlx-lm passes: None, "causal", a boolean array (True =
    attend) or an additive one; "causal" aligns the queries with the last keys (as the fused kernel).
    `softmax` is taken over the last axis (`fast_forward` passes numpy's).
    """
    if capture is None:
        capture = _unchanged
    queries, keys = capture("queries", queries), capture("keys", keys)
    batch, n_heads, length, dim = queries.shape
    n_kv = keys.shape[1]
    # Query head h reads KV head h // (n_heads / n_kv): group the queries instead of repeating the keys.
    grouped = (queries * scale).reshape(batch, n_kv, -1, dim)
    scores = (grouped @ keys.swapaxes(-1, -2)).reshape(batch, n_heads, length, -1)
    if softcap:
        scores = mx.tanh(scores / softcap) * softcap
    if isinstance(mask, str):
        total = scores.shape[-1]
        mask = mx.arange(total - length, total)[:, None] >= mx.arange(total)[None]
    if mask is not None and mask.dtype == mx.bool_:
        scores = mx.where(mask, scores, mx.array(mx.finfo(scores.dtype).min, scores.dtype))
    elif mask is not None:
        scores = scores + mask
    pattern = capture("pattern", softmax(scores))
    heads = pattern.reshape(batch, n_kv, -1, pattern.shape[-1]) @ values
    heads = capture("heads", heads.reshape(batch, n_heads, length, -1).transpose(0, 2, 1, 3))
    return heads.transpose(0, 2, 1, 3)


def _unchanged(kind: str, value: mx.array) -> mx.array:
    return value


def recompute_attention(module: nn.Module, args: tuple, kwargs: dict, capture: Capture, kinds: set[str]):
    """Call attention `module` with (x, mask, cache) `args`, attention computed explicitly."""
    cache = args[2] if len(args) > 2 else kwargs.get("cache")
    if cache is not None and kinds & set(SAVE_ONLY_KINDS):
        raise TraceError(
            f"{' and '.join(sorted(kinds & set(SAVE_ONLY_KINDS)))} can be saved in `model.trace(...)`, "
            "not during generation (each step sees a different number of keys); per-head outputs "
            "(`.heads`) can be saved and edited in both"
        )
    if family_of(module) == "gemma2":
        return _gemma2_attention(module, capture, *args, **kwargs)
    source = sys.modules[type(module).__module__]
    fused = source.scaled_dot_product_attention

    def explicit(queries, keys, values, cache=None, scale=1.0, mask=None, sinks=None):
        if sinks is not None or hasattr(cache, "bits"):
            raise TraceError("attention sinks and quantized KV caches are not supported by mlxterp's attention recomputation")
        return explicit_attention(queries, keys, values, scale, mask, capture)

    source.scaled_dot_product_attention = explicit
    try:
        return module(*args, **kwargs)
    finally:
        source.scaled_dot_product_attention = fused


def _gemma2_attention(module: nn.Module, capture: Capture, x: mx.array, mask=None, cache=None) -> mx.array:
    """mlx-lm's gemma2 Attention.__call__ with its inline attention replaced by `explicit_attention`."""
    batch, length, _ = x.shape

    def split(proj, heads):
        return proj(x).reshape(batch, length, heads, -1).transpose(0, 2, 1, 3)

    queries, keys = split(module.q_proj, module.n_heads), split(module.k_proj, module.n_kv_heads)
    values = split(module.v_proj, module.n_kv_heads)
    offset = cache.offset if cache is not None else 0
    queries, keys = module.rope(queries, offset=offset), module.rope(keys, offset=offset)
    if cache is not None:
        keys, values = cache.update_and_fetch(keys, values)
    out = explicit_attention(queries, keys, values, module.scale, mask, capture,
                             softcap=module.attn_logit_softcapping)
    return module.o_proj(out.transpose(0, 2, 1, 3).reshape(batch, length, -1))


def mask_pattern(pattern: mx.array, mask: mx.array) -> mx.array:
    """Zero a (batch, heads, query, key) pattern's rows and columns at padded tokens (mask 0)."""
    keep = mask.astype(pattern.dtype)
    return pattern * keep[:, None, :, None] * keep[:, None, None, :]
