"""Array functions of SAE training and inference: unit rows, gradient projection, geometric
median, per-latent totals, batch top-k, the dense architectures' training codes."""

from __future__ import annotations

import mlx.core as mx

from .jumprelu import jumprelu_functions


def unit_rows(w: mx.array) -> mx.array:
    """`w` (rows, d) with every row scaled to unit L2 norm."""
    return w / mx.maximum(mx.linalg.norm(w, axis=-1, keepdims=True), 1e-8)


def remove_parallel_component(grad: mx.array, w: mx.array) -> mx.array:
    """`grad` (rows, d) minus its component along each unit-norm row of `w`.

    A step along it leaves the row norms unchanged to first order, so Adam's update does not
    fight the unit-norm constraint (Bricken et al. 2023; sparsify).
    """
    return grad - mx.sum(grad * w, axis=-1, keepdims=True) * w


def geometric_median(points: mx.array, max_iter: int = 100, tol: float = 1e-6) -> mx.array:
    """Geometric median (d,) of `points` (n, d) by Weiszfeld iterations, started at the mean."""
    points = points.astype(mx.float32)
    guess = mx.mean(points, axis=0)
    for _ in range(max_iter):
        dist = mx.maximum(mx.linalg.norm(points - guess, axis=-1), 1e-8)
        weights = 1.0 / dist
        new = mx.sum(weights[:, None] * points, axis=0) / mx.sum(weights)
        shift = float(mx.linalg.norm(new - guess))
        guess = new
        if shift <= tol * max(1.0, float(mx.linalg.norm(guess))):
            break
    return guess


def latent_totals(
    top_acts: mx.array, top_indices: mx.array | None, d_hidden: int
) -> tuple[mx.array, mx.array, mx.array]:
    """Per latent (d_hidden,): tokens it fired on, sum and max of its activations.

    `top_acts`/`top_indices` are (n, k) as in ForwardOutput, or dense (n, d_hidden) with None.
    """
    if top_indices is None:
        active = (top_acts > 0).astype(mx.float32)
        return mx.sum(active, axis=0), mx.sum(top_acts, axis=0), mx.max(top_acts, axis=0)
    idx = top_indices.reshape(-1)
    acts = top_acts.reshape(-1)
    zeros = mx.zeros((d_hidden,), dtype=mx.float32)
    return (
        zeros.at[idx].add((acts > 0).astype(mx.float32)),
        zeros.at[idx].add(acts),
        zeros.at[idx].maximum(acts),
    )


def batch_topk(pre: mx.array, k: int) -> mx.array:
    """Keep the n*k largest of the (n, d_hidden) non-negative `pre` over the whole batch."""
    n_keep = min(pre.shape[0] * k, pre.size)
    kth = mx.min(mx.topk(mx.stop_gradient(pre).reshape(-1), n_keep))
    return mx.where(pre >= kth, pre, 0.0)


def dense_codes(raw: mx.array, architecture: str, k: int, threshold: mx.array, bandwidth: float):
    """Training codes of (n, d_hidden) pre-activations `raw` for the dense architectures:
    (codes, relu(raw), l0), where l0 is JumpReLU's (with its pseudo-derivative) and None otherwise."""
    pre = mx.maximum(raw, 0.0)
    if architecture == "jumprelu":
        codes, l0 = jumprelu_functions(bandwidth)
        return codes(raw, threshold), pre, l0(raw, threshold)
    return (pre if architecture == "relu" else batch_topk(pre, k)), pre, None
