"""The Neuronpedia export: SAEDashboard's batch layout field for field, every value the dashboard data's."""

import json

import numpy as np
import pytest

from conftest import TEXTS, random_sae
from mlxterp import cli
from mlxterp.activations import ContextSettings
from mlxterp.errors import SAEError
from mlxterp.features import collect_dashboard_data, feature_directions
from mlxterp.features.scan import scan
from mlxterp.viz import VizError, neuronpedia_batches, write_neuronpedia

CONTEXTS = ContextSettings(context_length=32)
# sae-dashboard 0.8.0's NeuronpediaDashboardBatch / Feature / Activation .to_dict() keys, in their order.
BATCH_KEYS = ["model_id", "layer", "sae_set", "sae_id_suffix", "features"]
FEATURE_KEYS = [
    "feature_index", "neuron_alignment_indices", "neuron_alignment_values", "neuron_alignment_l1",
    "correlated_neurons_indices", "correlated_neurons_l1", "correlated_neurons_pearson",
    "correlated_features_indices", "correlated_features_l1", "correlated_features_pearson",
    "neg_str", "neg_values", "pos_str", "pos_values", "frac_nonzero",
    "freq_hist_data_bar_values", "freq_hist_data_bar_heights", "logits_hist_data_bar_heights",
    "logits_hist_data_bar_values", "n_prompts_total", "n_tokens_in_prompt", "dataset", "decoder_weights_dist",
    "activations", "vector",
]
ACTIVATION_KEYS = ["bin_min", "bin_max", "bin_contains", "tokens", "values", "qualifying_token_index"]


@pytest.fixture(scope="module")
def data(tiny, tiny_sae):
    return collect_dashboard_data(tiny_sae, tiny, TEXTS, n_features=6, top_k=3, contexts=CONTEXTS, logit_bins=40)


def test_batches_have_neuronpedias_layout(data):
    batches = neuronpedia_batches(data, features_per_batch=4, dataset="pangrams")
    assert [len(b["features"]) for b in batches] == [4, 2]
    for batch in batches:
        assert list(batch) == BATCH_KEYS
        assert (batch["layer"], batch["sae_set"]) == (1, "res-mlxterp")
        for feature in batch["features"]:
            assert list(feature) == FEATURE_KEYS
            assert (feature["dataset"], feature["n_tokens_in_prompt"]) == ("pangrams", 32)
            assert feature["n_prompts_total"] == data["n_contexts"] > 0
            for activation in feature["activations"]:
                assert list(activation) == ACTIVATION_KEYS
    named = neuronpedia_batches(data, model_id="smollm2-135m", sae_set="res-mine")[0]
    assert (named["model_id"], named["sae_set"]) == ("smollm2-135m", "res-mine")


def test_feature_values_are_the_dashboard_datas(data):
    features = neuronpedia_batches(data)[0]["features"]
    assert [f["feature_index"] for f in features] == [r["index"] for r in data["features"]]
    for feature, record in zip(features, data["features"]):
        lens = record["logit_lens"]
        assert feature["pos_str"] == [t for t, _ in lens["top"]] and feature["pos_values"] == [v for _, v in lens["top"]]
        assert feature["neg_str"] == [t for t, _ in lens["bottom"]]
        assert feature["neg_values"] == [v for _, v in lens["bottom"]]
        assert feature["frac_nonzero"] == record["frequency"]
        edges = np.array(record["histogram"]["edges"])
        np.testing.assert_allclose(feature["freq_hist_data_bar_values"], (edges[:-1] + edges[1:]) / 2)
        assert feature["freq_hist_data_bar_heights"] == record["histogram"]["counts"]
        edges = np.array(lens["histogram"]["edges"])
        np.testing.assert_allclose(feature["logits_hist_data_bar_values"], (edges[:-1] + edges[1:]) / 2)
        assert feature["logits_hist_data_bar_heights"] == lens["histogram"]["counts"]
        bands = [(band, e) for band in record["quantile_examples"] for e in band["examples"]]
        activations = feature["activations"]
        assert len(activations) == len(record["top_examples"]) + len(bands)
        for activation, example in zip(activations, record["top_examples"]):
            assert (activation["bin_min"], activation["bin_max"], activation["bin_contains"]) == (
                -1, record["max_activation"], -1)
            assert activation["tokens"] == example["tokens"] and activation["values"] == example["activations"]
            assert activation["qualifying_token_index"] == example["peak"]
            assert activation["values"][example["peak"]] == pytest.approx(example["max_activation"], rel=1e-3)
        for activation, (band, example) in zip(activations[len(record["top_examples"]):], bands):
            assert (activation["bin_min"], activation["bin_max"], activation["bin_contains"]) == (
                band["min"], band["max"], band["contains"])
            assert band["min"] < activation["values"][example["peak"]] <= band["max"] + 1e-4
            assert activation["tokens"] == example["tokens"]


def test_logit_histogram_counts_the_vocabulary(data, tiny, tiny_sae):
    record = data["features"][0]
    logits = np.array(tiny.unembed(feature_directions(tiny_sae, [record["index"]])))[0]
    hist = record["logit_lens"]["histogram"]
    assert sum(hist["counts"]) == logits.size
    assert hist["edges"][0] == pytest.approx(logits.min(), abs=1e-5) and hist["edges"][-1] == pytest.approx(logits.max(), abs=1e-5)
    expected, _ = np.histogram(logits, bins=np.array(hist["edges"]))
    assert np.abs(expected - np.array(hist["counts"])).sum() <= 2  # float32 vs float64 at bin edges
    assert record["logit_lens"]["top"][0][1] == pytest.approx(logits.max(), abs=1e-3)


def test_bands_record_their_range_and_share(tiny, tiny_sae):
    texts = TEXTS[:2]  # few enough tokens that the reservoir (64 per feature) holds every activation
    data = collect_dashboard_data(tiny_sae, tiny, texts, n_features=6, top_k=3, contexts=CONTEXTS)
    fired: dict[int, list[float]] = {r["index"]: [] for r in data["features"]}

    class Collect:
        def update(self, batch):
            for f, v in zip(batch.feature, batch.value):
                if int(f) in fired:
                    fired[int(f)].append(float(v))

    scan(tiny_sae, tiny, texts, [Collect()], contexts=CONTEXTS)
    for record in data["features"]:
        values = np.array(fired[record["index"]])
        assert 0 < len(values) <= 64
        peak = record["max_activation"]
        for band, (low, high) in zip(record["quantile_examples"], [(0.5, 0.75), (0.25, 0.5), (0.0, 0.25)]):
            assert (band["min"], band["max"]) == pytest.approx((low * peak, high * peak))
            assert band["contains"] == pytest.approx(np.mean((values > low * peak) & (values <= high * peak)))


def test_write_neuronpedia_writes_batch_files_and_drops_stale_ones(data, tmp_path):
    out = tmp_path / "np"
    out.mkdir()
    (out / "batch-9.json").write_text("{}")
    (out / "notes.txt").write_text("mine")
    paths = write_neuronpedia(data, out, features_per_batch=4)
    assert [p.name for p in paths] == ["batch-0.json", "batch-1.json"]
    assert sorted(p.name for p in out.iterdir()) == ["batch-0.json", "batch-1.json", "notes.txt"]
    assert [json.loads(p.read_text()) for p in paths] == neuronpedia_batches(data, features_per_batch=4)


def test_bad_input_is_refused(data, tiny, tmp_path):
    plain = {**data, "features": [{**r, "logit_lens": {k: v for k, v in r["logit_lens"].items() if k != "histogram"}}
                                  for r in data["features"]]}
    with pytest.raises(VizError, match="no logit histogram.*logit_bins=40"):
        neuronpedia_batches(plain)
    with pytest.raises(VizError, match="features_per_batch must be a positive integer"):
        neuronpedia_batches(data, features_per_batch=0)
    with pytest.raises(VizError, match="lacks layer, component"):
        neuronpedia_batches({"model": "m", "features": []})
    (tmp_path / "file").write_text("x")
    with pytest.raises(VizError, match="is a file"):
        write_neuronpedia(data, tmp_path / "file")
    with pytest.raises(SAEError, match="logit_bins must be an integer from 0"):
        collect_dashboard_data(random_sae(tiny), tiny, TEXTS, logit_bins=-1)


def test_sae_method_and_cli_write_the_export(tiny, tmp_path, monkeypatch, capsys):
    sae = random_sae(tiny, seed=4)
    paths = sae.export_neuronpedia(tiny, TEXTS, tmp_path / "a", n_features=3, contexts=CONTEXTS, dataset_name="pangrams")
    batch = json.loads(paths[0].read_text())
    assert len(batch["features"]) == 3 and batch["features"][0]["dataset"] == "pangrams"
    assert len(batch["features"][0]["logits_hist_data_bar_heights"]) == 40

    sae.save(tmp_path / "sae.mlx")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(TEXTS))
    monkeypatch.setattr(cli, "_load_model", lambda spec: tiny)
    assert cli.main(["neuronpedia", str(tmp_path / "sae.mlx"), "--dataset", str(corpus), "--n-tokens", "300",
                     "--n-features", "2", "--model-id", "tiny", "--out", str(tmp_path / "b")]) == 0
    assert "1 Neuronpedia batch files written" in capsys.readouterr().out
    batch = json.loads((tmp_path / "b" / "batch-0.json").read_text())
    assert batch["model_id"] == "tiny" and len(batch["features"]) == 2
    assert batch["features"][0]["dataset"] == str(corpus)
