"""model.train_saes: several SAEs and transcoders from one forward per batch, on a tiny model;
transcoders (splice with the skip term, evaluation, files) and the errors of bad input."""

import contextlib
import json

import mlx.core as mx
import numpy as np
import pytest

from mlxterp import InterpretableModel, cli, evaluate_sae, load_sae, splice_sae
from mlxterp.activations import ActivationStore, ContextSettings
from mlxterp.errors import SAEError, TraceError
from mlxterp.sae.config import SAEConfig
from mlxterp.sae.model import SAE
from tiny_models import byte_tokenizer, tiny_model

TEXTS = [f"document {i}: " + "some words here and there " * (3 + i % 5) for i in range(120)]
CONFIG = SAEConfig(expansion_factor=4, k=8, batch_size=256, context_length=64, num_epochs=2, checkpoint_every=None)


@pytest.fixture(scope="module")
def model():
    return InterpretableModel((tiny_model("llama", seed=4), byte_tokenizer()), name="tiny-llama")


@contextlib.contextmanager
def counting_traces(model):
    """Counts the forward passes (traces) `model` runs inside the block, in the yielded list."""
    traces = []
    real_trace = model.trace

    def counting_trace(*args, **kwargs):
        traces.append(1)
        return real_trace(*args, **kwargs)

    model.trace = counting_trace
    try:
        yield traces
    finally:
        del model.trace


@pytest.fixture(scope="module")
def trained(model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("multi")
    with counting_traces(model) as traces:
        saes = model.train_saes("layers.*.mlp", TEXTS, CONFIG, transcoders=[1], skip_transcoders=[1],
                                save_dir=folder, progress=False)
    return saes, folder, len(traces)


def test_every_matching_hook_point_and_transcoder_gets_its_own_sae(trained, model):
    saes, folder, _ = trained
    assert list(saes) == ["layers.0.mlp", "layers.1.mlp", "layers.2.mlp", "layers.1.transcoder",
                          "layers.1.skip_transcoder"]
    for name, sae in saes.items():
        assert (folder / f"{name}.mlx").is_file()
        meta = sae.metadata
        assert meta["training"]["steps"] > 0 and np.isfinite(meta["training"]["final_metrics"]["val/fvu"])
        assert sae.attached_model is model
    tc = saes["layers.1.skip_transcoder"]
    assert (tc.transcode, tc.skip, saes["layers.1.transcoder"].skip) == (True, True, False)
    assert tc.hook_point == model.hook_point(1, "mlp_in") and tc.hook_point.port == "input"
    assert tc.output_hook_point.to_dict() == model.hook_point(1, "mlp").to_dict()
    assert saes["layers.2.mlp"].output_hook_point == saes["layers.2.mlp"].hook_point
    # Each has its own optimizer state: the weights differ although two read the same hook point.
    assert not np.allclose(np.array(saes["layers.1.transcoder"].W_enc), np.array(tc.W_enc))
    assert float(mx.abs(tc.W_skip).sum()) > 0


def test_one_forward_per_batch_whatever_the_number_of_hook_points(trained, model):
    _, _, multi_traces = trained
    with counting_traces(model) as traces:
        model.train_saes("layers.1.mlp", TEXTS, CONFIG, progress=False)
    assert multi_traces == len(traces) > 0


def test_store_rows_hold_each_hook_point_as_its_own_store_does(model):
    points = (model.hook_point(0, "output"), model.hook_point(2, "mlp_in"))
    settings = ContextSettings(context_length=64)
    joint = ActivationStore(model, TEXTS[:20], points, settings, progress=False)
    rows = np.asarray(joint.sample(300))
    assert rows.shape == (300, 2 * model.d_model)
    for i, point in enumerate(points):
        alone = np.asarray(ActivationStore(model, TEXTS[:20], point, settings, progress=False).sample(300))
        np.testing.assert_allclose(rows[:, joint.columns(i)], alone, rtol=1e-4, atol=1e-5)
    with model.trace(TEXTS[0], default_capture=False):
        mlp_in = model.layers[2].mlp.input.save()
    assert mlp_in.value.shape[-1] == model.d_model


def test_cached_rows_are_read_back(model, tmp_path):
    points = [model.hook_point(0, "mlp"), model.hook_point(1, "output")]
    store = ActivationStore(model, TEXTS[:20], points, ContextSettings(context_length=64), cache_dir=tmp_path,
                            progress=False)
    first = np.concatenate(list(store.chunks()))
    manifest = json.loads(next(tmp_path.glob("*/manifest.json")).read_text())
    assert [h["component"] for h in manifest["hook"]] == ["mlp", "output"]
    second = np.concatenate(list(store.chunks()))
    assert first.shape == second.shape == (store.n_tokens, 2 * model.d_model)
    np.testing.assert_allclose(np.sort(first[:, 0]), np.sort(second[:, 0]), rtol=1e-6)


def test_splice_uses_the_skip_term(trained, model):
    tc = trained[0]["layers.1.skip_transcoder"]
    text = TEXTS[3][:40]

    def spliced_mlp(sae):
        with model.trace(text, default_capture=False) as trace:
            splice_sae(sae, model, error_term=False)
            x = model.layers[1].mlp.input.save()
            y = model.layers[1].mlp.output.save()
            logits = model.output.save()
        return x.value, y.value, logits.value

    x, y, logits = spliced_mlp(tc)
    expected = tc(x[:, 1:])
    np.testing.assert_allclose(np.array(y[:, 1:]), np.array(expected), rtol=1e-4, atol=1e-5)
    no_skip = SAE.from_parts(_spec(tc), _tensors(tc, W_skip=0.0), "no skip")
    no_skip.metadata = tc.metadata
    _, y0, logits0 = spliced_mlp(no_skip)
    skip_part = np.array(x[:, 1:].astype(mx.float32) @ tc.W_skip.T)
    assert np.abs(skip_part).max() > 0
    # The spliced outputs differ by exactly the skip term (in raw units), and so do the logits.
    scale = float(np.asarray(tc.norm_stats["scale"])) / float(np.asarray(tc.target_norm_stats["scale"]))
    np.testing.assert_allclose(np.array(y[:, 1:] - y0[:, 1:]), skip_part * scale, rtol=1e-3, atol=1e-4)
    assert float(mx.max(mx.abs(logits - logits0))) > 1e-4


def _spec(sae):
    from mlxterp.sae.io import sae_spec

    return sae_spec(sae)


def _tensors(sae, W_skip):
    from mlxterp.sae.io import sae_tensors

    tensors = {name: np.array(value) for name, value in sae_tensors(sae).items()}
    tensors["W_skip"] = np.full_like(tensors["W_skip"], W_skip)
    return tensors


def test_transcoder_evaluation_replaces_the_mlp(trained, model):
    tc = trained[0]["layers.1.transcoder"]
    metrics = evaluate_sae(tc, model, TEXTS[:30], n_tokens=1000, n_ce_contexts=2)
    assert 0 < metrics["fvu"] < 1.5 and metrics["n_tokens"] > 0
    assert metrics["ce_loss_with_sae"] != metrics["ce_loss_clean"]
    # With the error term the MLP's output is back as it was, bit for bit (why evaluation skips it).
    text = TEXTS[3][:40]
    with model.trace(text, default_capture=False):
        clean = model.output.save()
    with model.trace(text, default_capture=False):
        splice_sae(tc, model, error_term=True)
        spliced = model.output.save()
    np.testing.assert_array_equal(np.array(spliced.value), np.array(clean.value))


def test_transcoder_files_round_trip_mlxterp_and_sparsify(trained, model, tmp_path):
    _, folder, _ = trained
    tc = load_sae(folder / "layers.1.skip_transcoder.mlx", model)
    x = mx.random.normal((50, model.d_model), key=mx.random.key(1))
    tc.save(tmp_path / "sp", format="sparsify")
    cfg = json.loads((tmp_path / "sp" / "cfg.json").read_text())
    assert (cfg["transcode"], cfg["skip_connection"], cfg["hookpoint"]) == (True, True, "layers.1.mlp")
    back = load_sae(tmp_path / "sp", model)
    assert back.hook_point == model.hook_point(1, "mlp_in") and back.output_hook_point.component == "mlp"
    np.testing.assert_allclose(np.array(back(x)), np.array(tc(x)), rtol=1e-4, atol=1e-4)
    with pytest.raises(SAEError, match="format='sparsify'"):
        tc.save(tmp_path / "sl", format="saelens")


def test_sparsify_transcoder_folders_that_do_not_fit_are_refused(trained, tmp_path):
    _, folder, _ = trained
    load_sae(folder / "layers.1.skip_transcoder.mlx").save(tmp_path / "sp", format="sparsify")
    cfg_path = tmp_path / "sp" / "cfg.json"
    cfg = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps({**cfg, "hookpoint": "layers.1"}))
    with pytest.raises(SAEError, match="transcoders of an MLP"):
        load_sae(tmp_path / "sp")
    cfg_path.write_text(json.dumps({**cfg, "skip_connection": False}))
    with pytest.raises(SAEError, match="W_skip"):
        load_sae(tmp_path / "sp")
    cfg_path.write_text(json.dumps({**cfg, "d_in": cfg["d_in"] + 1}))
    with pytest.raises(SAEError, match="shape"):
        load_sae(tmp_path / "sp")


def test_a_pattern_that_matches_nothing_lists_what_exists(model):
    with pytest.raises(TraceError, match=r"no hook point matches 'layers\.\*\.mlpp'.*layers\.<0\.\.2>\.<output\|mlp"):
        model.train_saes("layers.*.mlpp", TEXTS, CONFIG, progress=False)
    with pytest.raises(TraceError, match="layer 7 is out of range"):
        model.train_saes(transcoders=[7], dataset=TEXTS, config=CONFIG, progress=False)
    with pytest.raises(Exception, match="nothing to train"):
        model.train_saes(dataset=TEXTS, config=CONFIG, progress=False)
    assert [p.name for p in model.anatomy.match_hook_points(["layers.1.*", "model.layers.0"])] == [
        "layers.0.output", "layers.1.output", "layers.1.mlp", "layers.1.attn", "layers.1.mlp_in"]


def test_a_transcoder_whose_hook_points_or_widths_do_not_fit_is_refused(trained, model):
    tc = load_sae(trained[1] / "layers.1.transcoder.mlx", model)
    tc.metadata["output_hook_point"] = {"layer": 9, "component": "mlp", "path": ""}
    with pytest.raises(TraceError, match="layer 9 is out of range"):
        with model.trace(TEXTS[0][:20]):
            splice_sae(tc, model)
    with pytest.raises(SAEError, match=r"\[input \| target\] rows of width 2 \* d_model = "):
        tc.forward(mx.zeros((4, model.d_model)))
    wide = SAE(model.d_model + 2, 64, k=4, transcode=True)
    wide.metadata.update(hook_point=model.hook_point(1, "mlp_in").to_dict())
    with pytest.raises(SAEError, match="d_model"):
        with model.trace(TEXTS[0][:20]):
            splice_sae(wide, model)
    with pytest.raises(SAEError, match="transcode=True"):
        SAE(8, 16, k=4, skip=True)
    with pytest.raises(SAEError, match="unit_norm"):
        SAE(8, 16, k=4, transcode=True, normalization="unit_norm")


def test_cli_trains_several_hook_points(model, tmp_path, monkeypatch, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(TEXTS))
    monkeypatch.setattr(cli, "_load_model", lambda spec: model)
    code = cli.main(["train", "--dataset", str(corpus), "--hook-points", "layers.0.mlp", "layers.2.output",
                     "--skip-transcoders", "1", "--expansion-factor", "2", "--k", "4", "--batch-size", "128",
                     "--context-length", "64", "--max-tokens", "2000", "--out", str(tmp_path / "out")])
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "out").glob("*.mlx")) == [
        "layers.0.mlp.mlx", "layers.1.skip_transcoder.mlx", "layers.2.output.mlx"]
    assert cli.main(["train", "--dataset", str(corpus), "--hook-points", "layers.9.mlp",
                     "--out", str(tmp_path / "bad")]) == 2
    assert "no hook point matches 'layers.9.mlp'" in capsys.readouterr().err


def test_each_sae_logs_its_own_wandb_run_in_one_group(model, monkeypatch):
    wandb = pytest.importorskip("wandb")
    runs = []

    class Run:
        def __init__(self, **kwargs):
            self.kwargs, self.logged, self.finished = kwargs, [], False
            runs.append(self)

        def log(self, data, step=None):
            self.logged.append(dict(data))

        def finish(self):
            self.finished = True

    monkeypatch.setattr(wandb, "init", lambda **kwargs: Run(**kwargs))
    config = SAEConfig(expansion_factor=2, k=4, batch_size=256, context_length=64, checkpoint_every=None,
                       use_wandb=True, wandb_name="sweep-1")
    model.train_saes("layers.0.mlp", TEXTS[:60], config, skip_transcoders=[2], progress=False)
    assert sorted(r.kwargs["name"] for r in runs) == ["layers.0.mlp", "layers.2.skip_transcoder"]
    assert {r.kwargs["group"] for r in runs} == {"sweep-1"}
    assert all(r.finished and any("train/loss" in d for d in r.logged) and any("val/fvu" in d for d in r.logged)
               for r in runs)


def test_a_transcoder_is_browsed_like_an_sae(trained, model):
    from mlxterp.features import collect_dashboard_data

    tc = trained[0]["layers.1.skip_transcoder"]
    data = collect_dashboard_data(tc, model, TEXTS[:10], n_features=3, n_tokens=600)
    assert (data["layer"], data["component"], data["d_hidden"]) == (1, "mlp_in", tc.d_hidden)
    record = data["features"][0]
    assert record["top_examples"] and record["top_examples"][0]["max_activation"] > 0
    assert record["logit_lens"]["top"]


def test_an_interrupted_joint_run_resumes_where_each_sae_stopped(model, tmp_path, monkeypatch):
    from mlxterp.sae.train import SAETrainer

    config = SAEConfig(expansion_factor=2, k=4, batch_size=128, context_length=64, num_epochs=2,
                       checkpoint_every=3, validation_split=0.0)
    args = ("layers.0.mlp", TEXTS[:40], config)
    full = model.train_saes(*args, skip_transcoders=[1], save_dir=tmp_path / "full", progress=False)
    real_step, steps = SAETrainer.train_batch, []

    def interrupted(self, x, ckpt=None):
        if len(steps) == 9:
            raise KeyboardInterrupt
        steps.append(1)
        return real_step(self, x, ckpt)

    monkeypatch.setattr(SAETrainer, "train_batch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        model.train_saes(*args, skip_transcoders=[1], save_dir=tmp_path / "resumed", progress=False)
    assert sorted(p.name for p in (tmp_path / "resumed").iterdir()) == [
        "layers.0.mlp.mlx.checkpoint", "layers.1.skip_transcoder.mlx.checkpoint"]
    monkeypatch.undo()
    resumed = model.train_saes(*args, skip_transcoders=[1], save_dir=tmp_path / "resumed", progress=False)
    for name, sae in full.items():
        assert resumed[name].metadata["training"]["steps"] == sae.metadata["training"]["steps"]
        for param in ("W_enc", "W_dec", "b_dec"):
            np.testing.assert_allclose(np.array(getattr(resumed[name], param)), np.array(getattr(sae, param)),
                                       rtol=1e-4, atol=1e-5)
    assert not list((tmp_path / "resumed").glob("*.checkpoint"))
