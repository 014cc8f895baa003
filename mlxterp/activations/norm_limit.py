"""The norm limit: tokens far above the median activation norm (attention sinks) are left out.

SmolLM2 puts a second sink at position 1 of ~10% of contexts, at ~100x the median norm; such a
token would hold most of the variance of any batch it is in. Training, metrics, splices and
scans all leave out tokens above `max_norm_ratio` x the median norm of the training sample.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from ..errors import DataError


def norm_limit(sample, max_norm_ratio: float | None) -> float | None:
    """`max_norm_ratio` times the median token norm of `sample` (..., d_model); None for None."""
    if max_norm_ratio is None:
        return None
    sample = np.asarray(sample, dtype=np.float32)
    norms = np.linalg.norm(sample.reshape(-1, sample.shape[-1]), axis=-1)
    if norms.size == 0:
        raise DataError("cannot set a norm limit from an empty sample: pass some activations")
    return float(max_norm_ratio * np.median(norms))


def within_limits(rows: np.ndarray, limits, width: int) -> np.ndarray:
    """(n,) bool: True where every `width`-wide part i of `rows` (n, len(limits) * width) is within
    `limits[i]` (None: no limit), e.g. a transcoder's [input | target] rows."""
    keep = np.ones(len(rows), dtype=bool)
    for i, limit in enumerate(limits):
        if limit is not None:
            keep &= np.linalg.norm(np.asarray(rows)[:, i * width : (i + 1) * width], axis=-1) <= limit
    return keep


def within_limit(acts, max_token_norm: float | None) -> mx.array:
    """(...,) bool: True where a token of `acts` (..., d_model) has norm at most `max_token_norm`
    (every token when it is None)."""
    acts = mx.array(acts)
    if max_token_norm is None:
        return mx.ones(acts.shape[:-1], dtype=mx.bool_)
    return mx.linalg.norm(acts.astype(mx.float32), axis=-1) <= max_token_norm
