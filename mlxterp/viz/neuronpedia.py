"""Dashboard data -> Neuronpedia's feature JSON: the `batch-N.json` files that SAEDashboard's
NeuronpediaRunner writes and Neuronpedia's import tooling reads (docs/interop.md, "Neuronpedia").

Every value comes from the dashboard data (docs/architecture.md, "Feature records"); the keys,
their order and their meaning follow SAEDashboard's NeuronpediaDashboardBatch / Feature /
Activation `to_dict` (sae-dashboard 0.8.0), field for field.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from ..features.report import collect_dashboard_data
from ..io_utils import atomic_write_text
from ..sae.checks import resolve_model
from .html import VizError, validate_record

if TYPE_CHECKING:
    from ..model import InterpretableModel
    from ..sae.model import SAE

LOGIT_BINS = 40  # SAEDashboard's logit and activation histograms have 40 bins
# Neuronpedia names a source "{layer}-{sae_set}", the set after the stream it reads ("6-res-jb").
SET_PREFIX = {"output": "res", "mlp": "mlp", "attn": "att"}
BATCH_FILE = re.compile(r"batch-(\d+)\.json")
# SAEDashboard's feature-table fields (neuron alignment, activation correlations, per-head decoder
# weights): mlxterp's dashboard computes none of them, so they are written empty, as SAEDashboard
# writes them when those tables are off.
EMPTY_TABLES = ("neuron_alignment_indices", "neuron_alignment_values", "neuron_alignment_l1",
                "correlated_neurons_indices", "correlated_neurons_l1", "correlated_neurons_pearson",
                "correlated_features_indices", "correlated_features_l1", "correlated_features_pearson")


def neuronpedia_id(model_name: str) -> str:
    """A Neuronpedia-style model id from a model name: "HuggingFaceTB/SmolLM2-135M" -> "smollm2-135m"."""
    return str(model_name).rstrip("/").split("/")[-1].lower()


def neuronpedia_activation(example: Mapping[str, Any], bin_min: float, bin_max: float, bin_contains: float) -> dict:
    """One example window as a Neuronpedia activation: per-token strings and values, the bin it
    was drawn from (top examples: bin_min = bin_contains = -1, bin_max = the feature's maximum)."""
    return {"bin_min": float(bin_min), "bin_max": float(bin_max), "bin_contains": float(bin_contains),
            "tokens": list(example["tokens"]), "values": [float(v) for v in example["activations"]],
            "qualifying_token_index": int(example["peak"])}


def _bars(histogram: Mapping[str, Sequence[float]]) -> tuple[list[float], list[int]]:
    """(bar midpoints, bar heights) of an {"edges", "counts"} histogram, as SAEDashboard stores bars."""
    edges = [float(e) for e in histogram["edges"]]
    return [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])], [int(c) for c in histogram["counts"]]


def neuronpedia_feature(record: Mapping[str, Any], n_prompts_total: int = 0, n_tokens_in_prompt: int = 0,
                        dataset: str = "") -> dict:
    """One feature record (docs/architecture.md) in Neuronpedia's feature layout."""
    lens = record["logit_lens"]
    if "histogram" not in lens:
        raise VizError(f"feature {record.get('index')}'s record has no logit histogram, which Neuronpedia shows: "
                       f"collect the dashboard data with logit_bins={LOGIT_BINS}")
    act_values, act_heights = _bars(record["histogram"])
    logit_values, logit_heights = _bars(lens["histogram"])
    activations = [neuronpedia_activation(e, -1, record["max_activation"], -1) for e in record["top_examples"]]
    for band in record["quantile_examples"]:
        activations += [neuronpedia_activation(e, band["min"], band["max"], band["contains"]) for e in band["examples"]]
    out: dict[str, Any] = {"feature_index": int(record["index"])}
    out.update({name: [] for name in EMPTY_TABLES})
    out.update({
        "neg_str": [t for t, _ in lens["bottom"]], "neg_values": [float(v) for _, v in lens["bottom"]],
        "pos_str": [t for t, _ in lens["top"]], "pos_values": [float(v) for _, v in lens["top"]],
        "frac_nonzero": float(record["frequency"]),
        "freq_hist_data_bar_values": act_values, "freq_hist_data_bar_heights": act_heights,
        "logits_hist_data_bar_heights": logit_heights, "logits_hist_data_bar_values": logit_values,
        "n_prompts_total": int(n_prompts_total), "n_tokens_in_prompt": int(n_tokens_in_prompt),
        "dataset": str(dataset), "decoder_weights_dist": [], "activations": activations,
        "vector": [],  # a steering vector's own direction (SAEDashboard's vector sets); empty for SAE features
    })
    return out


def neuronpedia_batches(data: Mapping[str, Any], model_id: str | None = None, sae_set: str | None = None,
                        dataset: str = "", features_per_batch: int = 128) -> list[dict]:
    """The dashboard data as Neuronpedia batches ({"model_id", "layer", "sae_set", "sae_id_suffix", "features"}),
    `features_per_batch` features each. `model_id` None: from the model name; `sae_set` None:
    "res-mlxterp", "mlp-mlxterp" or "att-mlxterp" after the hook point's component."""
    if isinstance(features_per_batch, bool) or not isinstance(features_per_batch, int) or features_per_batch < 1:
        raise VizError(f"features_per_batch must be a positive integer, got {features_per_batch!r}")
    keys = ("model", "layer", "component", "features")
    missing = [key for key in keys if key not in data] if isinstance(data, Mapping) else list(keys)
    if missing:
        raise VizError(f"dashboard data lacks {', '.join(missing)}: build it with "
                       "mlxterp.features.report.collect_dashboard_data(...)")
    for record in data["features"]:
        validate_record(record)
    head = {"model_id": model_id or neuronpedia_id(data["model"]), "layer": int(data["layer"]),
            "sae_set": sae_set or f"{SET_PREFIX.get(data['component'], data['component'])}-mlxterp",
            "sae_id_suffix": None}  # Neuronpedia's source id is "{layer}-{sae_set}" plus "__{suffix}" if set
    run = {"n_prompts_total": data.get("n_contexts", 0), "n_tokens_in_prompt": data.get("context_length", 0),
           "dataset": dataset}
    features = [neuronpedia_feature(record, **run) for record in data["features"]]
    return [{**head, "features": features[i : i + features_per_batch]}
            for i in range(0, len(features), features_per_batch)]


def write_neuronpedia(data: Mapping[str, Any], out_dir: str | os.PathLike, model_id: str | None = None,
                      sae_set: str | None = None, dataset: str = "", features_per_batch: int = 128) -> list[Path]:
    """Write the dashboard data as `out_dir/batch-0.json`, `batch-1.json`, ... (atomically; batch
    files of an earlier, larger export in `out_dir` are removed). Returns the paths written."""
    batches = neuronpedia_batches(data, model_id, sae_set, dataset, features_per_batch)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise VizError(f"{out} is a file; the Neuronpedia export writes a folder of batch files: pass a folder path")
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, batch in enumerate(batches):
        paths.append(out / f"batch-{i}.json")
        atomic_write_text(paths[-1], json.dumps(batch, allow_nan=False))
    for old in out.iterdir():
        match = BATCH_FILE.fullmatch(old.name)
        if match and int(match.group(1)) >= len(batches):
            old.unlink()
    return paths


def export_neuronpedia(
    sae: "SAE",
    model: "InterpretableModel | None" = None,
    dataset: Any = None,
    out_dir: str | os.PathLike = "neuronpedia",
    model_id: str | None = None,
    sae_set: str | None = None,
    features_per_batch: int = 128,
    dataset_name: str | None = None,
    **options: Any,
) -> list[Path]:
    """Scan `dataset`, then write the SAE's features in Neuronpedia's feature JSON into `out_dir`.

    `options` are `collect_dashboard_data`'s (n_features, n_tokens, top_k, ...); the logit
    histogram is added with SAEDashboard's 40 bins. `dataset_name` (recorded as each feature's
    "dataset"; None: `dataset` when it is a name or path). Returns the batch files written.
    """
    options.setdefault("logit_bins", LOGIT_BINS)
    data = collect_dashboard_data(sae, resolve_model(sae, model), dataset, **options)
    if dataset_name is None:
        dataset_name = str(dataset) if isinstance(dataset, (str, os.PathLike)) else ""
    return write_neuronpedia(data, out_dir, model_id, sae_set, dataset_name, features_per_batch)
