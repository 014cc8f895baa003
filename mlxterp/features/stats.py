"""Per-feature statistics: firing frequency, mean and max activation, activation histograms.

Computed streaming from the nonzero SAE codes of a scan, so they can share one pass over the
data with the max-activating examples. A feature's histogram covers [0, 2^e] with `n_bins`
equal bins, the power of two e growing (and bins merging pairwise) as larger activations
arrive; counts stay exact and no second pass is needed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..activations import ContextSettings
from ..sae.checks import check_features, resolve_model
from ..sae.metrics import FeatureStats
from .scan import CodeBatch, scan

if TYPE_CHECKING:
    from ..model import InterpretableModel
    from ..sae.model import SAE

EMPTY = -10_000


class StatsCollector:
    """A scan consumer accumulating FeatureStats for `n_features` code columns."""

    def __init__(self, n_features: int, n_bins: int = 32):
        if n_bins < 2 or n_bins & (n_bins - 1):
            raise ValueError(f"n_bins must be a power of two >= 2, got {n_bins}")
        self.n_bins = n_bins
        self.n_tokens = 0
        self.counts = np.zeros(n_features, dtype=np.int64)
        self.sums = np.zeros(n_features, dtype=np.float64)
        self.maxima = np.zeros(n_features, dtype=np.float32)
        self.hist = np.zeros((n_features, n_bins), dtype=np.int64)
        # Feature i's histogram spans [0, 2**exponent[i]]; EMPTY until it first fires.
        self.exponent = np.full(n_features, EMPTY, dtype=np.int64)

    def update(self, batch: CodeBatch) -> None:
        feature, value = batch.feature, np.maximum(batch.value, 0)
        n = len(self.counts)
        self.n_tokens += batch.n_scanned
        self.counts += np.bincount(feature, minlength=n)
        self.sums += np.bincount(feature, weights=value, minlength=n)
        np.maximum.at(self.maxima, feature, value)
        self._grow_ranges()
        top = np.exp2(self.exponent[feature].astype(np.float64))
        scaled = np.divide(value, top, out=np.zeros(len(value)), where=top > 0)
        bins = np.minimum((scaled * self.n_bins).astype(np.int64), self.n_bins - 1)
        self.hist += np.bincount(feature * self.n_bins + bins, minlength=n * self.n_bins).reshape(
            n, self.n_bins
        )

    def _grow_ranges(self) -> None:
        """Raise exponents to cover the maxima, merging bins 2^growth at a time."""
        with np.errstate(divide="ignore"):
            needed = np.where(self.maxima > 0, np.ceil(np.log2(self.maxima)), EMPTY).astype(np.int64)
        fresh = self.exponent == EMPTY
        self.exponent[fresh] = needed[fresh]
        growth = np.where(fresh, 0, np.maximum(needed - self.exponent, 0))
        for g in np.unique(growth[growth > 0]):
            rows = np.flatnonzero(growth == g)
            merged = np.zeros((len(rows), self.n_bins), dtype=np.int64)
            factor = 1 << int(min(g, np.log2(self.n_bins)))
            merged[:, : self.n_bins // factor] = self.hist[rows].reshape(len(rows), -1, factor).sum(-1)
            self.hist[rows] = merged
            self.exponent[rows] += g

    def result(self, indices: np.ndarray) -> FeatureStats:
        stats = FeatureStats.from_totals(self.counts, self.sums, self.maxima, self.n_tokens, indices)
        stats.hist_counts = self.hist.copy()
        stats.hist_top = np.exp2(self.exponent.astype(np.float64))
        return stats


def feature_stats(
    sae: "SAE",
    model: "InterpretableModel | None" = None,
    dataset: Any = None,
    feature_indices: Sequence[int] | None = None,
    n_tokens: int | None = 100_000,
    contexts: ContextSettings | None = None,
    contexts_per_forward: int = 8,
    n_bins: int = 32,
    progress: bool = False,
) -> FeatureStats:
    """Firing frequency, mean/max activation and histograms of every feature, in one pass.

    `model` None uses `sae.attached_model`; `dataset` is anything `load_texts` reads (None: the
    bundled corpus); at most `n_tokens` positions are scanned (None: all); `contexts` as in `scan`.
    """
    model = resolve_model(sae, model)
    indices = np.arange(sae.d_hidden) if feature_indices is None else check_features(sae, feature_indices)
    collector = StatsCollector(len(indices), n_bins)
    scan(
        sae, model, dataset, [collector],
        feature_indices=None if feature_indices is None else indices, n_tokens=n_tokens,
        contexts=contexts, contexts_per_forward=contexts_per_forward,
        progress=progress,
    )
    return collector.result(indices)
