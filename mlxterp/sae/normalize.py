"""Input normalization: statistics fitted once on training activations, applied and undone by the SAE.

Schemes (stats are float32 arrays stored with the SAE):
- "none": identity; stats {}.
- "expected_norm": x * scale with scale = sqrt(d_model / E||x||^2), so the mean squared norm is
  d_model (SAELens' expected_average_only_in); stats {"scale": ()}.
- "standardize": (x - mean) / std per dimension; stats {"mean": (d,), "std": (d,)}.
- "unit_norm": mean-centre, then divide each token by its own norm; stats {"mean": (d,)}. Undoing
  it needs that per-token norm, which `normalize` returns as `token_norm`.
"""

from __future__ import annotations

import math

import mlx.core as mx

from ..errors import SAEError
from .config import NORMALIZATION_SCHEMES

EPS = 1e-6


def identity_stats(scheme: str, d_model: int) -> dict[str, mx.array]:
    """Stats under which `scheme` leaves inputs unchanged (before `fit_normalizer` runs)."""
    ones, zeros = mx.ones((d_model,)), mx.zeros((d_model,))
    return {
        "none": {},
        "expected_norm": {"scale": mx.array(1.0)},
        "standardize": {"mean": zeros, "std": ones},
        "unit_norm": {"mean": zeros},
    }[_check(scheme)]


def fit_normalizer(scheme: str, sample: mx.array) -> dict[str, mx.array]:
    """Statistics of `scheme` estimated from `sample` (..., d_model) of raw activations."""
    x = mx.array(sample).astype(mx.float32).reshape(-1, sample.shape[-1])
    if x.shape[0] == 0:
        raise SAEError("cannot fit input normalization on an empty sample: pass some activations")
    _check(scheme)
    if scheme == "none":
        return {}
    if scheme == "expected_norm":
        mean_sq = mx.mean(mx.sum(x * x, axis=-1))
        return {"scale": mx.sqrt(x.shape[-1] / mx.maximum(mean_sq, EPS))}
    mean = mx.mean(x, axis=0)
    if scheme == "unit_norm":
        return {"mean": mean}
    return {"mean": mean, "std": mx.maximum(mx.sqrt(mx.var(x, axis=0)), EPS)}


def normalize(scheme: str, stats: dict[str, mx.array], x: mx.array) -> tuple[mx.array, mx.array | None]:
    """(normalized x, token_norm): token_norm is (..., 1) for "unit_norm", else None."""
    if scheme == "expected_norm":
        return x * stats["scale"], None
    if scheme == "standardize":
        return (x - stats["mean"]) / stats["std"], None
    if scheme == "unit_norm":
        centred = x - stats["mean"]
        norm = mx.maximum(mx.linalg.norm(centred, axis=-1, keepdims=True), EPS)
        return centred / norm, norm
    return x, None


def denormalize(
    scheme: str, stats: dict[str, mx.array], y: mx.array, token_norm: mx.array | None = None
) -> mx.array:
    """Map `y` from the normalized space back to raw activations (inverse of `normalize`)."""
    if scheme == "expected_norm":
        return y / stats["scale"]
    if scheme == "standardize":
        return y * stats["std"] + stats["mean"]
    if scheme == "unit_norm":
        if token_norm is None:
            raise SAEError(
                "a 'unit_norm' SAE divides each token by its own norm, so decoding needs that norm: "
                "reconstruct with sae(x), or pass token_norm=sae.token_norm(x) to decode"
            )
        return y * token_norm + stats["mean"]
    return y


def summarize(scheme: str, stats: dict[str, mx.array]) -> dict[str, float | str]:
    """A small JSON-able summary of the stats, for metadata."""
    out: dict[str, float | str] = {"scheme": scheme}
    for name, value in stats.items():
        key = name if value.ndim == 0 else f"{name}_mean"
        out[key] = float(mx.mean(value))
        if not math.isfinite(out[key]):
            raise SAEError(f"normalization statistic {name} is not finite: check the activations for NaN/inf")
    return out


def _check(scheme: str) -> str:
    if scheme not in NORMALIZATION_SCHEMES:
        raise SAEError(f"unknown normalization {scheme!r}: use one of {', '.join(NORMALIZATION_SCHEMES)}")
    return scheme
