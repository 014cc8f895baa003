"""Dashboard data: every feature record of docs/architecture.md's contract, from one pass.

`collect_dashboard_data` scans the dataset once (statistics and examples together), then adds
the decoder-side analyses (logit lens, similar features) and returns plain JSON-able dicts that
`mlxterp.viz` renders.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from ..activations import ContextSettings
from ..errors import SAEError
from ..sae.checks import check_features, resolve_model, sae_hook_point
from ..sae.metrics import FeatureStats
from .decoder import check_logit_bins, logit_lens_many, similar_features
from .examples import DEFAULT_BANDS, ExampleSet, collect_examples
from .stats import StatsCollector

if TYPE_CHECKING:
    from ..model import InterpretableModel
    from ..sae.model import SAE


def collect_dashboard_data(
    sae: "SAE",
    model: "InterpretableModel | None" = None,
    dataset: Any = None,
    n_features: int | None = None,
    feature_indices: Sequence[int] | None = None,
    top_k: int = 10,
    n_tokens: int | None = 100_000,
    contexts: ContextSettings | None = None,
    contexts_per_forward: int = 8,
    window: tuple[int, int] = (16, 8),
    bands: Sequence[float] = DEFAULT_BANDS,
    per_band: int = 5,
    logit_k: int = 10,
    n_similar: int = 5,
    labels: Mapping[int, str] | None = None,
    density_bins: int = 40,
    logit_bins: int = 0,
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """The dashboard data dict (docs/architecture.md, "Feature records") of an SAE on `dataset`.

    Args:
        dataset: what `scan` reads: texts (anything `mlxterp.data.load_texts` reads; None: the bundled
            corpus), an `ActivationStore` whose cache to encode instead of running the model, or `Contexts`.
        n_features: records for this many features, drawn at random (`seed`) among those that
            fired; None with no `feature_indices`: every feature.
        feature_indices: records for exactly these features (overrides `n_features`).
        top_k: top examples per feature; `bands`/`per_band`: lower activation bands (see
            `top_activating_examples`); `window`: tokens kept before/after each peak.
        n_tokens, contexts, contexts_per_forward: the scan (see `scan`).
        logit_k: tokens in each logit-lens list; n_similar: nearest features by decoder cosine.
        labels: optional feature -> label text (e.g. from a FeatureSet).
        logit_bins: > 0 adds each feature's logit histogram over the vocabulary, with that many
            bins, to its logit lens (what Neuronpedia shows; costs a pass over the vocabulary).

    The density histogram covers every feature that fired (log10 frequency); features that
    never fired have frequency 0 in their records.
    """
    check_logit_bins(logit_bins)
    model = resolve_model(sae, model)
    point = sae_hook_point(sae, model)
    scanned = None if feature_indices is None else check_features(sae, feature_indices)
    indices = np.arange(sae.d_hidden) if scanned is None else scanned
    stats_collector = StatsCollector(len(indices))
    examples = collect_examples(
        sae, model, dataset, scanned, top_k=top_k, window=window, bands=bands, per_band=per_band,
        seed=seed, extra_consumers=[stats_collector], n_tokens=n_tokens,
        contexts=contexts, contexts_per_forward=contexts_per_forward,
        progress=progress,
    )
    stats = stats_collector.result(indices)
    chosen = _choose(stats, feature_indices, n_features, seed)
    edges, counts = stats.density_histogram(density_bins)
    return {
        "model": model.name,
        "layer": point.layer,
        "component": point.component,
        "d_model": int(sae.d_model),
        "d_hidden": int(sae.d_hidden),
        "n_tokens": int(stats.n_tokens),
        "n_contexts": int(examples.contexts.tokens.shape[0]),
        "context_length": int(examples.contexts.length),
        "density_histogram": {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]},
        "features": feature_records(sae, model, chosen, stats, examples, logit_k, n_similar, labels, logit_bins),
    }


def feature_records(
    sae: "SAE",
    model: "InterpretableModel",
    features: Sequence[int],
    stats: FeatureStats,
    examples: ExampleSet,
    logit_k: int = 10,
    n_similar: int = 5,
    labels: Mapping[int, str] | None = None,
    logit_bins: int = 0,
) -> list[dict]:
    """One contract feature record per feature, from a scan's statistics and examples."""
    if not len(features):
        return []
    lenses = logit_lens_many(sae, features, model, k=logit_k, bins=logit_bins)
    similar = similar_features(sae, features, n_similar)
    records = []
    for feature, lens, near in zip(features, lenses, similar):
        row = stats.row(feature)
        found = examples[feature]
        hist_edges, hist_counts = stats.histogram(feature)
        records.append({
            "index": int(feature),
            "label": (labels or {}).get(int(feature)),
            "frequency": float(stats.frequency[row]),
            "mean_activation": float(stats.mean_activation[row]),
            "max_activation": float(stats.max_activation[row]),
            "histogram": {"edges": [float(e) for e in hist_edges], "counts": [int(c) for c in hist_counts]},
            "top_examples": [e.to_dict() for e in found.top],
            "quantile_examples": [
                {"label": label, "min": float(low), "max": float(high), "contains": float(share),
                 "examples": [e.to_dict() for e in band]}
                for (label, band), (low, high, share) in zip(found.bands, found.band_ranges)
            ],
            "logit_lens": lens.to_dict(),
            "similar": [[int(j), round(float(c), 4)] for j, c in near],
        })
    return records


def _choose(stats: FeatureStats, explicit, n_features: int | None, seed: int) -> list[int]:
    if explicit is not None:
        return [int(i) for i in np.atleast_1d(explicit)]
    if n_features is None:
        return [int(i) for i in stats.indices]
    if n_features < 0:
        raise SAEError(f"n_features must be >= 0, got {n_features}")
    alive = stats.indices[stats.counts > 0]
    picked = np.random.default_rng(seed).choice(alive, size=min(n_features, len(alive)), replace=False)
    return sorted(int(i) for i in picked)
