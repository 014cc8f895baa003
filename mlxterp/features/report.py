"""Dashboard data: every feature record of docs/architecture.md's contract, from one pass.

`collect_dashboard_data` scans the dataset once (statistics and examples together), then adds
the decoder-side analyses (logit lens, similar features) and returns plain JSON-able dicts that
`mlxterp.viz` renders.
"""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from ..errors import SAEError
from .decoder import logit_lens_many, similar_features
from .examples import DEFAULT_BANDS, ExampleSet, collect_examples
from .hookpoint import check_feature, check_features, hook_point, resolve_model, sae_layer
from .stats import FeatureStats, StatsCollector

if TYPE_CHECKING:
    from ..model import InterpretableModel
    from ..sae.model import SAE


def collect_dashboard_data(
    model: "InterpretableModel",
    sae: "SAE",
    dataset: Any = None,
    n_features: int | None = None,
    feature_indices: Sequence[int] | None = None,
    top_k: int = 10,
    n_tokens: int | None = 100_000,
    context_tokens: int = 256,
    batch_size: int = 8,
    drop_first: int = 1,
    window: tuple[int, int] = (16, 8),
    bands: Sequence[float] = DEFAULT_BANDS,
    per_band: int = 5,
    logit_k: int = 10,
    n_similar: int = 5,
    labels: Mapping[int, str] | None = None,
    density_bins: int = 40,
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """The dashboard data dict (docs/architecture.md, "Feature records") of an SAE on `dataset`.

    Args:
        dataset: anything `mlxterp.data.load_texts` reads (None: the bundled corpus).
        n_features: records for this many features, drawn at random (`seed`) among those that
            fired; None with no `feature_indices`: every feature.
        feature_indices: records for exactly these features (overrides `n_features`).
        top_k: top examples per feature; `bands`/`per_band`: lower activation bands (see
            `top_activating_examples`); `window`: tokens kept before/after each peak.
        n_tokens, context_tokens, batch_size, drop_first: the scan (see `scan`).
        logit_k: tokens in each logit-lens list; n_similar: nearest features by decoder cosine.
        labels: optional feature -> label text (e.g. from a FeatureSet).

    The density histogram covers every feature that fired (log10 frequency); features that
    never fired have frequency 0 in their records.
    """
    hook_point(sae, model)
    scanned = None if feature_indices is None else check_features(sae, feature_indices)
    indices = np.arange(sae.d_hidden) if scanned is None else scanned
    stats_collector = StatsCollector(len(indices))
    examples = collect_examples(
        sae, model, dataset, scanned, top_k=top_k, window=window, bands=bands, per_band=per_band,
        seed=seed, extra_consumers=[stats_collector], n_tokens=n_tokens,
        context_tokens=context_tokens, batch_size=batch_size, drop_first=drop_first,
        progress=progress,
    )
    stats = stats_collector.result(indices)
    chosen = _choose(stats, feature_indices, n_features, seed)
    layer, component = sae_layer(sae)
    edges, counts = stats.density_histogram(density_bins)
    return {
        "model": model.name,
        "layer": int(model.anatomy.check_layer(layer)),
        "component": component,
        "d_model": int(sae.d_model),
        "d_hidden": int(sae.d_hidden),
        "n_tokens": int(stats.n_tokens),
        "density_histogram": {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]},
        "features": feature_records(model, sae, chosen, stats, examples, logit_k, n_similar, labels),
    }


def feature_records(
    model: "InterpretableModel",
    sae: "SAE",
    features: Sequence[int],
    stats: FeatureStats,
    examples: ExampleSet,
    logit_k: int = 10,
    n_similar: int = 5,
    labels: Mapping[int, str] | None = None,
) -> list[dict]:
    """One contract feature record per feature, from a scan's statistics and examples."""
    if not len(features):
        return []
    lenses = logit_lens_many(sae, features, model, k=logit_k)
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
                {"label": label, "examples": [e.to_dict() for e in band]} for label, band in found.bands
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


def visualize_feature(
    sae: "SAE",
    feature_idx: int,
    model: "InterpretableModel | None" = None,
    dataset: Any = None,
    path: str | os.PathLike | None = None,
    **options,
) -> Path:
    """Write feature `feature_idx`'s self-contained HTML page (default `feature_<idx>.html`).

    One scan over `dataset` for this feature only; `options` are `collect_dashboard_data`'s
    (n_tokens, top_k, window, ...). `model` None uses `sae.attached_model`. Returns the path.
    """
    from ..viz import write_feature_page

    feature = check_feature(sae, feature_idx)
    data = collect_dashboard_data(resolve_model(sae, model), sae, dataset, feature_indices=[feature], **options)
    return write_feature_page(data["features"][0], data, path or f"feature_{feature}.html")


def launch_dashboard(
    sae: "SAE",
    model: "InterpretableModel | None" = None,
    dataset: Any = None,
    out_dir: str | os.PathLike | None = None,
    port: int = 8000,
    block: bool = True,
    host: str = "127.0.0.1",
    open_browser: bool = False,
    **options,
):
    """Scan `dataset`, write the feature dashboard into `out_dir` (None: a new temporary folder)
    and serve it on localhost:`port` (0: any free port; a port in use raises VizError).

    With `block` it serves until Ctrl-C; otherwise it returns the running DashboardServer
    (`.url`, `.close()`). `options` are `collect_dashboard_data`'s (n_features, n_tokens, ...).
    """
    from ..viz import launch_dashboard as serve

    _check_port_free(host, port)  # before the scan, which may take minutes
    data = collect_dashboard_data(resolve_model(sae, model), sae, dataset, **options)
    return serve(data, out_dir, port=port, block=block, host=host, open_browser=open_browser)


def _check_port_free(host: str, port: int) -> None:
    from ..viz import VizError

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            raise VizError(
                f"port {port} on {host} is already in use; pass another port, e.g. port={port + 1}, "
                "or port=0 to let the system pick a free one"
            ) from exc
