"""Array-level SAE evaluation, streamed over batches of raw activations (no language model)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Iterable

import mlx.core as mx
import numpy as np

from ..errors import SAEError
from .model import latent_totals

if TYPE_CHECKING:
    from .model import SAE

DENSE_FREQUENCY = 0.1


def evaluate_reconstruction(
    sae: "SAE", activation_batches: Iterable[Any], per_feature: bool = False
) -> dict[str, Any]:
    """Reconstruction quality and sparsity of `sae` over batches of raw activations (..., d_model).

    Returns floats: mse (raw scale, per element), fvu (squared error / total variance around the
    mean of all evaluated tokens), explained_variance (1 - fvu), l0 (mean active latents per
    token), dead_fraction (latents that never fired on these tokens), dense_fraction (latents
    firing on more than 10% of tokens), cosine (mean cosine of reconstruction and input), and
    n_tokens. With `per_feature`, also "per_feature": {"frequency", "mean_activation" (over the
    tokens where it fired), "max_activation"} as (d_hidden,) numpy arrays. Batches are processed
    one at a time; codes of all tokens are never held at once.
    """
    h = sae.d_hidden
    n = 0
    mean = np.zeros(sae.d_model)
    m2 = sq_error = l0_sum = cos_sum = 0.0
    fired = mx.zeros((h,))
    act_sum = mx.zeros((h,))
    act_max = mx.zeros((h,))
    for batch in activation_batches:
        x = mx.array(batch).astype(mx.float32).reshape(-1, batch.shape[-1])
        if x.shape[0] == 0:
            continue
        if x.shape[-1] != sae.d_model:
            raise SAEError(f"activations have width {x.shape[-1]} but the SAE has d_model={sae.d_model}")
        recon, acts, idx = sae.reconstruct(x)
        counts, sums, maxes = latent_totals(acts, idx, h)
        fired, act_sum, act_max = fired + counts, act_sum + sums, mx.maximum(act_max, maxes)
        batch_mean = mx.mean(x, axis=0)
        cos = mx.sum(x * recon, axis=-1) / mx.maximum(
            mx.linalg.norm(x, axis=-1) * mx.linalg.norm(recon, axis=-1), 1e-12)
        stats = mx.stack([mx.sum(mx.square(x - recon)), mx.sum(mx.square(x - batch_mean)),
                          mx.sum(counts), mx.sum(cos)])
        mx.eval(stats, batch_mean, fired, act_sum, act_max)
        b_sq, b_m2, b_l0, b_cos = (float(v) for v in np.array(stats, dtype=np.float64))
        if not math.isfinite(b_sq + b_m2):
            raise SAEError("NaN/inf in the activations or the reconstruction: check the activations "
                           "(and the SAE's weights) for NaN/inf")
        # Chan et al.'s pairwise merge keeps the total variance exact without a second pass.
        b_n = x.shape[0]
        b_mean = np.array(batch_mean, dtype=np.float64)
        delta = b_mean - mean
        total = n + b_n
        m2 += b_m2 + float(delta @ delta) * n * b_n / total
        mean += delta * b_n / total
        n = total
        sq_error += b_sq
        l0_sum += b_l0
        cos_sum += b_cos
    if n == 0:
        raise SAEError("no activations to evaluate: the batches were empty")
    freq = np.array(fired, dtype=np.float64) / n
    fvu = sq_error / m2 if m2 > 0 else float("nan")
    out: dict[str, Any] = {
        "mse": sq_error / (n * sae.d_model),
        "fvu": fvu,
        "explained_variance": 1.0 - fvu,
        "l0": l0_sum / n,
        "dead_fraction": float(np.mean(freq == 0)),
        "dense_fraction": float(np.mean(freq > DENSE_FREQUENCY)),
        "cosine": cos_sum / n,
        "n_tokens": n,
    }
    if per_feature:
        counts = np.array(fired, dtype=np.float64)
        out["per_feature"] = {
            "frequency": freq.astype(np.float32),
            "mean_activation": (np.array(act_sum, dtype=np.float64) / np.maximum(counts, 1)).astype(np.float32),
            "max_activation": np.array(act_max, dtype=np.float32),
        }
    return out
