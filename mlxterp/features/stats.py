"""Per-feature statistics: firing frequency, mean and max activation, activation histograms.

Computed streaming from the nonzero SAE codes of a scan, so they can share one pass over the
data with the max-activating examples. A feature's histogram covers [0, 2^e] with `n_bins`
equal bins, the power of two e growing (and bins merging pairwise) as larger activations
arrive; counts stay exact and no second pass is needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from .hookpoint import check_features, resolve_model
from .scan import CodeBatch, scan

if TYPE_CHECKING:
    from ..model import InterpretableModel
    from ..sae.model import SAE

EMPTY = -10_000

@dataclass
class FeatureStats:
    """Statistics of features over `n_tokens` scanned positions; arrays are (n_features,).

    `indices` are the SAE feature indices the rows describe. `frequency` is the fraction of
    positions where a feature is active, `mean_activation` its mean where active (0 if never),
    `max_activation` its largest activation. `hist_counts` (n_features, n_bins) counts its
    nonzero activations in equal bins over [0, hist_top].
    """

    indices: np.ndarray
    n_tokens: int
    counts: np.ndarray
    frequency: np.ndarray
    mean_activation: np.ndarray
    max_activation: np.ndarray
    hist_counts: np.ndarray
    hist_top: np.ndarray

    @property
    def dead(self) -> np.ndarray:
        """SAE indices of the features that never fired."""
        return self.indices[self.counts == 0]

    def row(self, feature: int) -> int:
        """The row of SAE feature `feature` in these arrays."""
        hits = np.flatnonzero(self.indices == feature)
        if hits.size == 0:
            raise KeyError(f"feature {feature} is not among the {len(self.indices)} features with statistics")
        return int(hits[0])

    def histogram(self, feature: int) -> tuple[np.ndarray, np.ndarray]:
        """(edges (n+1,), counts (n,)) of the feature's nonzero activations, empty top bins cut."""
        row = self.row(feature)
        counts = self.hist_counts[row]
        used = np.flatnonzero(counts)
        if used.size == 0:
            return np.zeros(0, dtype=np.float64), np.zeros(0, dtype=np.int64)
        n = used[-1] + 1
        edges = np.linspace(0.0, float(self.hist_top[row]), len(counts) + 1)[: n + 1]
        return edges, counts[:n].copy()

    def density_histogram(self, n_bins: int = 40) -> tuple[np.ndarray, np.ndarray]:
        """(edges, counts) of log10 firing frequency over the features that fired at least once."""
        alive = self.frequency[self.counts > 0]
        if alive.size == 0:
            return np.zeros(0), np.zeros(0, dtype=np.int64)
        counts, edges = np.histogram(np.log10(alive), bins=n_bins)
        return edges, counts

    def summary(self) -> str:
        alive = self.counts > 0
        lines = [
            f"{len(self.indices)} features over {self.n_tokens} tokens: "
            f"{int((~alive).sum())} dead ({100 * (~alive).mean():.1f}%)",
        ]
        if alive.any():
            freq = self.frequency[alive]
            lines.append(
                f"firing frequency of live features: median {np.median(freq):.2e}, "
                f"min {freq.min():.2e}, max {freq.max():.2e}"
            )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


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
        tokens = max(self.n_tokens, 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(self.counts > 0, self.sums / np.maximum(self.counts, 1), 0.0)
        return FeatureStats(
            indices=np.asarray(indices, dtype=np.int64),
            n_tokens=self.n_tokens,
            counts=self.counts.copy(),
            frequency=self.counts / tokens,
            mean_activation=mean.astype(np.float32),
            max_activation=self.maxima.copy(),
            hist_counts=self.hist.copy(),
            hist_top=np.exp2(self.exponent.astype(np.float64)),
        )


def feature_stats(
    sae: "SAE",
    model: "InterpretableModel | None" = None,
    dataset: Any = None,
    feature_indices: Sequence[int] | None = None,
    n_tokens: int | None = 100_000,
    context_tokens: int = 256,
    batch_size: int = 8,
    drop_first: int = 1,
    n_bins: int = 32,
    progress: bool = False,
) -> FeatureStats:
    """Firing frequency, mean/max activation and histograms of every feature, in one pass.

    `model` None uses `sae.attached_model`; `dataset` is anything `load_texts` reads (None: the
    bundled corpus); at most `n_tokens` positions are scanned (None: all), the first
    `drop_first` of every context excluded.
    """
    model = resolve_model(sae, model)
    indices = np.arange(sae.d_hidden) if feature_indices is None else check_features(sae, feature_indices)
    collector = StatsCollector(len(indices), n_bins)
    scan(
        sae, model, dataset, [collector],
        feature_indices=None if feature_indices is None else indices, n_tokens=n_tokens,
        context_tokens=context_tokens, batch_size=batch_size, drop_first=drop_first,
        progress=progress,
    )
    return collector.result(indices)
