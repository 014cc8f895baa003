"""analyze_text, dashboard records, the feature page and the served dashboard."""

import socket
import urllib.request

import mlx.core as mx
import numpy as np
import pytest

from mlxterp.activations import ContextSettings

from mlxterp.errors import SAEError
from mlxterp.features import analyze_text, collect_dashboard_data
from mlxterp.viz import VizError
from mlxterp.viz.html import validate_record
from tiny_models import midway_norm

PROMPT = "Sphinx of black quartz"


def test_analyze_text_ranks_features_overall_and_per_token(tiny, tiny_sae):
    result = tiny_sae.analyze_text(tiny, PROMPT, top_k=5)
    with tiny.trace(PROMPT) as trace:
        pass
    codes = np.array(tiny_sae.encode(trace.activations["model.layers.1"]))[0]
    np.testing.assert_array_equal(result.codes, codes)
    peaks = codes[1:].max(0)  # the attention sink is not ranked
    expected = np.argsort(-peaks, kind="stable")[:5]
    assert result.feature_indices == expected.tolist()
    for feature, activation, position in result.top:
        assert activation == peaks[feature] and codes[position, feature] == activation and position >= 1
    for row, ranked in zip(codes, result.per_token):
        assert [f for f, _ in ranked] == np.argsort(-row, kind="stable")[:5].tolist()
    assert result.tokens == tiny.to_str_tokens(PROMPT)
    assert "attention sink" in str(result) and f"{result.top[0][1]:.3f}" in str(result)
    assert analyze_text(tiny_sae, tiny, PROMPT, top_k=5).top == result.top  # the function behind the method
    assert list(result) == [(f, a) for f, a, _ in result.top]


def test_analyze_text_does_not_rank_tokens_above_the_norm_limit(tiny, make_sae):
    sae = make_sae(tiny)
    with tiny.trace(PROMPT) as trace:
        pass
    acts = np.array(trace.activations["model.layers.1"])[0]
    norms = np.linalg.norm(acts, axis=-1)
    sae.metadata["max_token_norm"] = midway_norm(norms[1:])
    result = sae.analyze_text(tiny, PROMPT, top_k=5)
    ranked = norms <= sae.metadata["max_token_norm"]
    ranked[0] = False
    assert result.ranked.tolist() == ranked.tolist()
    peaks = np.where(ranked[:, None], result.codes, -np.inf).max(0)
    for feature, activation, position in result.top:
        assert ranked[position] and activation == peaks[feature]
    assert str(result).count("not ranked") == int((~ranked).sum())


def test_analyze_text_errors(tiny, tiny_sae):
    with pytest.raises(SAEError, match="non-empty prompt"):
        analyze_text(tiny_sae, tiny, "")
    with pytest.raises(SAEError, match="top_k must be at least 1"):
        analyze_text(tiny_sae, tiny, PROMPT, top_k=0)


@pytest.fixture(scope="module")
def data(tiny, tiny_sae):
    from conftest import TEXTS

    return collect_dashboard_data(tiny_sae, tiny, TEXTS, n_features=6, top_k=3, contexts=ContextSettings(context_length=32))


def test_dashboard_data_follows_the_record_contract(data, tiny, tiny_sae):
    assert (data["model"], data["layer"], data["component"], data["d_hidden"]) == (tiny.name, 1, "output", 128)
    assert len(data["features"]) == 6
    for record in data["features"]:
        validate_record(record)
        fired = round(record["frequency"] * data["n_tokens"])
        assert fired > 0 and len(record["top_examples"]) == min(3, fired)
        assert record["top_examples"][0]["max_activation"] == pytest.approx(record["max_activation"])
        assert sum(record["histogram"]["counts"]) == fired
        lens = tiny_sae.logit_lens(record["index"])
        assert [t for t, _ in record["logit_lens"]["top"]] == [t for t, _ in lens.top]
        assert [j for j, _ in record["similar"]] == [j for j, _ in tiny_sae.nearest_features(record["index"], 5)]
    assert sum(data["density_histogram"]["counts"]) <= tiny_sae.d_hidden


def test_visualize_feature_writes_a_self_contained_page(tiny, tiny_sae, texts, tmp_path):
    feature = tiny_sae.analyze_text(tiny, texts[0]).feature_indices[0]
    path = tiny_sae.visualize_feature(feature, tiny, texts, path=tmp_path / "f.html", contexts=ContextSettings(context_length=32))
    page = path.read_text()
    assert path == tmp_path / "f.html" and f'"index":{feature}' in page
    assert "<script src" not in page and "http://" not in page.replace("http://www.w3.org", "")


def test_launch_dashboard_serves_and_refuses_a_busy_port(tiny, tiny_sae, texts, tmp_path):
    server = tiny_sae.launch_dashboard(tiny, texts, out_dir=tmp_path / "dash", port=0, block=False,
                                       n_features=3, contexts=ContextSettings(context_length=32))
    try:
        with urllib.request.urlopen(server.url + "data.js") as response:
            assert b"MLXTERP_DASHBOARD" in response.read()
        with pytest.raises(VizError, match=f"port {server.port} .* already in use"):
            tiny_sae.launch_dashboard(tiny, texts, port=server.port, block=False)
    finally:
        server.close()


def test_cli_analyze_prints_the_top_features(tiny, tiny_sae, tmp_path, monkeypatch, capsys):
    from mlxterp import cli

    path = tmp_path / "sae.mlx"
    tiny_sae.save(path)
    monkeypatch.setattr(cli, "_load_model", lambda spec: tiny)
    assert cli.main(["analyze", str(path), PROMPT, "--top-k", "3"]) == 0
    assert str(tiny_sae.analyze_text(tiny, PROMPT, top_k=3)) in capsys.readouterr().out
