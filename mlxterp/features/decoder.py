"""Decoder-weight analysis: logit lens, cosine similarity, nearest and diverse features, baseline.

A feature's direction in the model's activation space is what adding 1 to its code adds to the
SAE's reconstruction, `decode(e_i) - decode(0)`: W_dec[i] mapped through the SAE's output
scaling (if it normalises its input; "unit_norm" SAEs scale by each token's norm). The logit lens sends that direction through the model's
final norm and unembedding. Cosine similarities compare the rows of W_dec.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Sequence

import mlx.core as mx
import numpy as np

from ..errors import SAEError
from ..sae.checks import check_compatible, check_features, resolve_model
from ..sae.ops import unit_rows

if TYPE_CHECKING:
    from ..model import InterpretableModel
    from ..sae.model import SAE

CHUNK = 512


def feature_directions(
    sae: "SAE", feature_indices: int | Iterable[int], token_norm: mx.array | None = None
) -> mx.array:
    """(n, d_model) float32: the change of the SAE's output per unit of each feature's code.

    A "unit_norm" SAE scales its output by each token's own norm: pass that `token_norm`
    (..., 1) (from `sae.token_norm(x)`) to get the directions at those tokens (..., n, d_model);
    without it they are given per unit of token norm.
    """
    indices = check_features(sae, feature_indices)
    basis = mx.zeros((len(indices), sae.d_hidden), dtype=mx.float32)
    basis[mx.arange(len(indices)), mx.array(indices)] = 1.0
    if token_norm is None:
        token_norm = mx.ones((1, 1), dtype=mx.float32)
    else:
        token_norm = token_norm[..., None, :]
    zero = mx.zeros((1, sae.d_hidden), dtype=mx.float32)
    return sae.decode(basis, token_norm) - sae.decode(zero, token_norm)


@dataclass
class LogitLens:
    """A feature's decoder direction read as logits: the tokens it promotes and suppresses.

    `peakiness` is the top logit's z-score over the vocabulary (compare `random_baseline`).
    `histogram` (edges, counts): every vocabulary token's logit, in equal bins from the lowest
    to the highest (None unless asked for: `logit_lens_many(..., bins=40)`).
    """

    feature: int
    top: list[tuple[str, float]]
    bottom: list[tuple[str, float]]
    top_ids: list[int]
    peakiness: float
    histogram: tuple[np.ndarray, np.ndarray] | None = None

    def to_dict(self) -> dict:
        """{"top": [[token, value], ...], "bottom": [...]} (and "histogram": {"edges", "counts"}
        when computed), as feature records store it."""
        out: dict = {
            "top": [[t, round(float(v), 4)] for t, v in self.top],
            "bottom": [[t, round(float(v), 4)] for t, v in self.bottom],
        }
        if self.histogram is not None:
            edges, counts = self.histogram
            out["histogram"] = {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}
        return out

    def __str__(self) -> str:
        top = ", ".join(f"{t!r} {v:.2f}" for t, v in self.top)
        bottom = ", ".join(f"{t!r} {v:.2f}" for t, v in self.bottom)
        return (
            f"Feature {self.feature} logit lens (peakiness {self.peakiness:.1f}):\n"
            f"  promotes: {top}\n  suppresses: {bottom}"
        )


def logit_lens(
    sae: "SAE",
    feature_idx: int,
    model: "InterpretableModel | None" = None,
    k: int = 10,
    apply_norm: bool = True,
) -> LogitLens:
    """The `k` tokens feature `feature_idx`'s direction promotes most and least.

    With `apply_norm`, the direction goes through the model's final norm (its scale then does
    not matter for RMSNorm); without, straight into the unembedding. `model` None uses
    `sae.attached_model`.
    """
    return logit_lens_many(sae, [feature_idx], model, k, apply_norm)[0]


def logit_lens_many(
    sae: "SAE",
    feature_indices: Sequence[int],
    model: "InterpretableModel | None" = None,
    k: int = 10,
    apply_norm: bool = True,
    bins: int = 0,
) -> list[LogitLens]:
    """`logit_lens` of several features, computed `CHUNK` features at a time; with `bins` > 0
    each also gets the histogram of its logits over the whole vocabulary."""
    check_logit_bins(bins)
    model = resolve_model(sae, model)
    check_compatible(sae, model)
    indices = check_features(sae, feature_indices)
    out = []
    for start in range(0, len(indices), CHUNK):
        chunk = indices[start : start + CHUNK]
        logits = model.unembed(feature_directions(sae, chunk), apply_norm=apply_norm)
        out += _lens_rows(model, chunk, logits.astype(mx.float32), k, bins)
    return out


def check_logit_bins(bins: int, name: str = "logit_bins") -> None:
    if isinstance(bins, bool) or not isinstance(bins, int) or not 0 <= bins <= 255:
        raise SAEError(f"{name} must be an integer from 0 (no logit histogram) to 255, got {bins!r}")


def _lens_rows(model, indices: np.ndarray, logits: mx.array, k: int, bins: int = 0) -> list[LogitLens]:
    k = min(k, logits.shape[-1])
    top_ids, top_vals = _largest(logits, k)
    bottom_ids, bottom_vals = _largest(-logits, k)
    peak = np.array(_peakiness(logits))
    histograms = _histograms(logits, bins) if bins else [None] * len(indices)
    decode = model.tokenizer.decode
    return [
        LogitLens(
            feature=int(f),
            top=[(decode([int(t)]), float(v)) for t, v in zip(top_ids[i], top_vals[i])],
            bottom=[(decode([int(t)]), float(-v)) for t, v in zip(bottom_ids[i], bottom_vals[i])],
            top_ids=[int(t) for t in top_ids[i]],
            peakiness=float(peak[i]),
            histogram=histograms[i],
        )
        for i, f in enumerate(indices)
    ]


def _histograms(values: mx.array, bins: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per row of `values` (n, m): (edges (bins+1,), counts (bins,)), equal bins from its min to max."""
    low, high = mx.min(values, axis=-1, keepdims=True), mx.max(values, axis=-1, keepdims=True)
    width = mx.maximum(high - low, 1e-30)
    # Bin ids on the MLX side as one byte each; numpy counts them row by row (a scatter-add is slower).
    ids = np.array(mx.clip(mx.floor((values - low) / width * bins), 0, bins - 1).astype(mx.uint8))
    low, high = np.array(low)[:, 0].astype(np.float64), np.array(high)[:, 0].astype(np.float64)
    return [(np.linspace(lo, hi, bins + 1), np.bincount(row, minlength=bins)) for lo, hi, row in zip(low, high, ids)]


def _largest(values: mx.array, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids, values), each (n, k): the k largest entries of each row of `values`, largest first."""
    # A partition then a sort of k entries: sorting whole 49k-token rows costs ~10x more.
    ids = mx.argpartition(-values, k - 1, axis=-1)[:, :k]
    picked = mx.take_along_axis(values, ids, axis=-1)
    order = mx.argsort(-picked, axis=-1)
    ids, picked = mx.take_along_axis(ids, order, axis=-1), mx.take_along_axis(picked, order, axis=-1)
    return np.array(ids), np.array(picked)


def _peakiness(logits: mx.array) -> mx.array:
    """(n,) z-score of each row's largest logit: how much one token stands out."""
    mean = mx.mean(logits, axis=-1)
    std = mx.sqrt(mx.var(logits, axis=-1)) + 1e-12
    return (mx.max(logits, axis=-1) - mean) / std


def _decoder_directions(sae: "SAE", indices: np.ndarray | None = None) -> mx.array:
    """Unit decoder rows (all, or those of `indices`), float32."""
    weights = sae.W_dec.astype(mx.float32)
    return unit_rows(weights if indices is None else weights[mx.array(indices)])


def cosine_similarity(
    sae: "SAE", rows: Sequence[int] | None = None, columns: Sequence[int] | None = None
) -> np.ndarray:
    """(len(rows), len(columns)) cosines between decoder directions (None: every feature).

    Computed `CHUNK` rows at a time; the full matrix of a 9216-feature SAE takes 340 MB.
    """
    row_idx = np.arange(sae.d_hidden) if rows is None else check_features(sae, rows)
    col = _decoder_directions(sae, None if columns is None else check_features(sae, columns))
    parts = [
        np.array(_decoder_directions(sae, row_idx[s : s + CHUNK]) @ col.T)
        for s in range(0, len(row_idx), CHUNK)
    ]
    return np.concatenate(parts, axis=0)


def similar_features(
    sae: "SAE", feature_indices: Sequence[int], n: int = 10
) -> list[list[tuple[int, float]]]:
    """For each feature, its `n` nearest other features by decoder cosine, nearest first."""
    indices = check_features(sae, feature_indices)
    n = min(n, sae.d_hidden - 1)
    out = []
    for start in range(0, len(indices), CHUNK):
        chunk = indices[start : start + CHUNK]
        cos = cosine_similarity(sae, chunk)
        cos[np.arange(len(chunk)), chunk] = -np.inf
        best = np.argsort(-cos, axis=1)[:, :n]
        out += [[(int(j), float(c[j])) for j in row] for c, row in zip(cos, best)]
    return out


def nearest_features(sae: "SAE", feature_idx: int, n: int = 10) -> list[tuple[int, float]]:
    """The `n` features whose decoder directions are closest (cosine) to `feature_idx`'s."""
    return similar_features(sae, [feature_idx], n)[0]


def diverse_features(
    sae: "SAE",
    n: int,
    max_cosine: float = 0.1,
    candidates: Sequence[int] | None = None,
    seed: int = 0,
) -> list[int]:
    """Greedily pick up to `n` features whose decoder directions pairwise have |cosine| < max_cosine.

    Candidates are tried in order (e.g. live features sorted by frequency); None tries every
    feature in a random order drawn from `seed`. Fewer than `n` come back when no more fit.
    """
    if candidates is None:
        order = np.random.default_rng(seed).permutation(sae.d_hidden)
    else:
        order = check_features(sae, candidates)
    directions = _decoder_directions(sae, order)
    closest = np.zeros(len(order), dtype=np.float32)
    picked: list[int] = []
    available = np.ones(len(order), dtype=bool)
    while len(picked) < n:
        fits = np.flatnonzero(available & (closest < max_cosine))
        if fits.size == 0:
            break
        choice = fits[0]
        picked.append(int(order[choice]))
        available[choice] = False
        cos = np.abs(np.array(directions @ directions[int(choice)]))
        closest = np.maximum(closest, cos)
    return picked


@dataclass
class RandomBaseline:
    """What random unit directions score, to compare features against (seed 002's baseline).

    peakiness (n,): logit-lens peakiness of random directions; max_cosine (n,): each random
    direction's largest |cosine| with any decoder row.
    """

    peakiness: np.ndarray
    max_cosine: np.ndarray

    def __str__(self) -> str:
        return (
            f"random directions (n={len(self.peakiness)}): logit-lens peakiness "
            f"{self.peakiness.mean():.2f} ± {self.peakiness.std():.2f}, max |cosine| with a "
            f"feature {self.max_cosine.mean():.3f} ± {self.max_cosine.std():.3f}"
        )


def random_baseline(
    sae: "SAE", model: "InterpretableModel | None" = None, n: int = 100, seed: int = 0,
    apply_norm: bool = True,
) -> RandomBaseline:
    """Logit-lens peakiness and nearest-feature cosine of `n` random unit directions."""
    if n < 1:
        raise SAEError(f"n must be at least 1 random direction, got {n}")
    model = resolve_model(sae, model)
    check_compatible(sae, model)
    vectors = mx.random.normal((n, sae.d_model), key=mx.random.key(seed))
    vectors = unit_rows(vectors)
    peak = _peakiness(model.unembed(vectors, apply_norm=apply_norm).astype(mx.float32))
    decoder = _decoder_directions(sae)
    max_cos = mx.max(mx.abs(vectors @ decoder.T), axis=-1)
    return RandomBaseline(np.array(peak), np.array(max_cos))
