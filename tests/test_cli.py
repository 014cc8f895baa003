"""The `mlxterp` command on the tiny model: train, evaluate, dashboard, run, and bad input."""

import json

import pytest

from mlxterp import InterpretableModel, cli, evaluate_sae, load_sae
from mlxterp.activations import ContextSettings
from mlxterp.data import load_texts
from tiny_models import byte_tokenizer, tiny_model

TEXTS = [f"Document {i}. " + "The quick brown fox jumps over the lazy dog. " * (2 + i % 4) for i in range(24)]
SMALL = ["--expansion-factor", "2", "--k", "4", "--batch-size", "64", "--context-length", "32", "--epochs", "1"]


@pytest.fixture(scope="module")
def tiny():
    return InterpretableModel((tiny_model("llama", seed=3), byte_tokenizer()))


@pytest.fixture
def corpus(tmp_path, tiny, monkeypatch):
    monkeypatch.setattr(cli, "_load_model", lambda spec: tiny)
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(TEXTS))
    return path


def test_train_then_evaluate_then_dashboard(tiny, corpus, tmp_path, capsys):
    sae_path = tmp_path / "sae.mlx"
    assert cli.main(["train", "--dataset", str(corpus), "--layer", "1", "--out", str(sae_path), *SMALL]) == 0
    assert f"to {sae_path}" in capsys.readouterr().out
    sae = load_sae(sae_path, model=tiny)
    assert sae.hook_point == tiny.hook_point(1, "mlp")  # the CLI's default component is train_sae's
    assert sae.d_hidden == 2 * tiny.d_model and sae.k == 4
    assert sae.metadata["context_length"] == 32

    out = tmp_path / "eval.json"
    assert cli.main(["evaluate", str(sae_path), "--dataset", str(corpus), "--n-tokens", "500",
                     "--ce-contexts", "2", "--out", str(out)]) == 0
    written = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == pytest.approx(written, nan_ok=True)
    direct = evaluate_sae(sae, tiny, load_texts(str(corpus)), n_tokens=500, n_ce_contexts=2)
    assert written == pytest.approx(direct, rel=1e-6, nan_ok=True)

    board = tmp_path / "board"
    assert cli.main(["dashboard", str(sae_path), "--dataset", str(corpus), "--out", str(board),
                     "--n-tokens", "300"]) == 0
    assert (board / "index.html").is_file()
    prefix = "window.MLXTERP_DASHBOARD = "
    data = json.loads((board / "data.js").read_text().strip()[len(prefix):].rstrip(";"))
    assert (data["layer"], data["component"], data["d_hidden"]) == (1, "mlp", sae.d_hidden)
    assert 0 < data["n_tokens"] <= 300 and len(data["features"]) == sae.d_hidden


def test_run_trains_evaluates_and_writes_a_dashboard(tiny, corpus, tmp_path, monkeypatch):
    forwards = {"all": 0, "dashboard": 0}
    trace, collect = tiny.trace, cli.collect_dashboard_data
    phase = ["all"]

    def counted(*args, **kwargs):
        forwards[phase[0]] += 1
        return trace(*args, **kwargs)

    def dashboard(*args, **kwargs):
        phase[0] = "dashboard"
        try:
            return collect(*args, **kwargs)
        finally:
            phase[0] = "all"

    monkeypatch.setattr(tiny, "trace", counted)
    monkeypatch.setattr(cli, "collect_dashboard_data", dashboard)
    out = tmp_path / "job"
    assert cli.main(["run", "--dataset", str(corpus), "--layer", "2", "--component", "output", "--out", str(out),
                     "--eval-tokens", "400", "--dashboard-tokens", "300", "--max-tokens", "3000", *SMALL]) == 0
    assert forwards["all"] > 0 and forwards["dashboard"] == 0  # the dashboard reads the training cache
    script = (out / "dashboard" / "data.js").read_text().strip()
    data = json.loads(script[len("window.MLXTERP_DASHBOARD = "):].rstrip(";"))
    assert data["n_tokens"] == 300 and any(f["top_examples"] for f in data["features"])
    sae = load_sae(out / "sae.mlx", model=tiny)
    assert sae.hook_point == tiny.hook_point(2, "output")
    metrics = json.loads((out / "eval.json").read_text())
    assert 0 < metrics["n_tokens"] <= 400 and metrics["l0"] == pytest.approx(4.0)
    assert (out / "dashboard" / "index.html").is_file()
    assert ContextSettings.from_metadata(sae.metadata).context_length == 32


def test_bad_input_exits_2_with_a_clear_message(tiny, corpus, tmp_path, capsys):
    assert cli.main(["dashboard", str(tmp_path / "missing.mlx"), "--out", str(tmp_path / "b")]) == 2
    assert "no SAE file" in capsys.readouterr().err
    assert cli.main(["dashboard", str(tmp_path / "missing.mlx"), "--serve", "--port", "99999"]) == 2
    assert "port must be a whole number from 0 to 65535" in capsys.readouterr().err
    assert cli.main(["train", "--dataset", str(corpus), "--layer", "9", "--out", str(tmp_path / "x.mlx"), *SMALL]) == 2
    assert "layer 9 is out of range" in capsys.readouterr().err
    assert not (tmp_path / "x.mlx").exists()
