"""SAE trainer: unit-norm decoder, LR schedule, data forms, dead latents, resume, NaN handling, W&B."""

import os

import mlx.core as mx
import numpy as np
import pytest

from mlxterp.errors import SAEError
from mlxterp.sae.config import SAEConfig
from mlxterp.sae.io import read_tensors
from mlxterp.sae.model import SAE
from mlxterp.sae.checkpoints import CHECKPOINT_FORMAT, checkpoint_path
from mlxterp.sae.optim import lr_at
from mlxterp.sae import train as train_module
from mlxterp.sae.resample import resample_dead
from mlxterp.sae.train import SAETrainer, train_sae_on_activations

D = 16


def sparse_data(n=4096, d=D, n_dirs=48, active=3, seed=0, subspace=None):
    """Tokens that are sums of `active` random unit directions with positive magnitudes."""
    rng = np.random.default_rng(seed)
    dirs = rng.normal(size=(n_dirs, d))
    if subspace is not None:
        dirs[:, subspace:] = 0
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    idx = np.argsort(rng.random((n, n_dirs)), axis=1)[:, :active]
    mags = rng.uniform(0.5, 2.0, size=(n, active))
    return (np.einsum("na,nad->nd", mags, dirs[idx]) * 10 + 3).astype(np.float32)


def config(**kw):
    base = dict(expansion_factor=4, k=4, batch_size=256, num_epochs=1, warmup_steps=5, learning_rate=3e-3,
                log_every=5, checkpoint_every=None, validation_split=0.0, dead_tokens_threshold=2048)
    return SAEConfig(**{**base, **kw})


def test_training_reduces_loss_and_keeps_decoder_unit_norm():
    data = sparse_data()
    cfg = config(num_epochs=2, validation_split=0.1)
    sae = SAE.from_config(D, cfg)
    trainer = SAETrainer(sae, cfg)
    metrics = trainer.fit(data, progress=False)
    hist = trainer.history
    assert hist[-1]["fvu"] < 0.75 * hist[0]["fvu"]
    assert all(h["l0"] <= 4 for h in hist) and trainer.step == 2 * (int(4096 * 0.9) // 256)
    np.testing.assert_allclose(np.linalg.norm(np.array(sae.W_dec), axis=-1), 1, rtol=1e-5)
    for key in ("val/loss", "val/l0", "val/dead_fraction", "val/fvu", "val/explained_variance", "val/mse"):
        assert key in metrics
    # val/fvu is the FVU of the held-out tokens, recomputed here in float64 numpy
    held = data[np.random.default_rng(cfg.seed).permutation(len(data))[: int(len(data) * 0.1)]]
    recon = np.array(sae(mx.array(held)), dtype=np.float64)
    fvu = ((held - recon) ** 2).sum() / ((held - held.mean(0)) ** 2).sum()
    assert metrics["val/fvu"] == pytest.approx(fvu, rel=1e-4) and fvu < 0.5
    training = sae.metadata["training"]
    assert training["steps"] == trainer.step and training["config"]["k"] == 4
    stats = trainer.get_stats()
    assert stats.frequency.shape == (4 * D,) and stats.n_tokens == (trainer.step // 2) * 256
    assert abs(float(stats.frequency.sum()) - 4) < 1e-3  # k latents fire per token
    assert np.all(stats.max_activation >= stats.mean_activation)


def test_training_restores_the_mlx_cache_limit():
    before = 123 << 20
    original = mx.set_cache_limit(before)
    try:
        train_sae_on_activations(sparse_data(n=1024), config(), progress=False)
        assert mx.set_cache_limit(before) == before  # what training raised it to was put back
    finally:
        mx.set_cache_limit(original)


def test_tied_weights_train_with_unit_rows():
    cfg = config(tied_weights=True)
    sae = train_sae_on_activations(sparse_data(), cfg, progress=False)
    assert "W_dec" not in sae.parameters()
    np.testing.assert_allclose(np.linalg.norm(np.array(sae.W_enc), axis=-1), 1, rtol=1e-5)


def test_lr_schedule_warmup_cosine_floor():
    cfg = config(lr_schedule="cosine", warmup_steps=10, min_lr_ratio=0.1)
    lr = lambda s, c=cfg: float(lr_at(mx.array(s), 1.0, c, 110))
    assert lr(0) == pytest.approx(0.1) and lr(9) == pytest.approx(1.0)
    assert lr(60) == pytest.approx(0.55, abs=1e-4)
    assert lr(110) == pytest.approx(0.1) and lr(500) == pytest.approx(0.1)
    assert float(lr_at(mx.array(50), 2.0, config(lr_schedule="constant", warmup_steps=0), 110)) == 2.0
    short_run = config(warmup_steps=100)  # 30 steps: warmup is cut to 6 so the peak is reached
    assert float(lr_at(mx.array(5), 1.0, short_run, 30)) == pytest.approx(1.0)
    assert float(lr_at(mx.array(2), 1.0, short_run, 30)) == pytest.approx(0.5)
    unknown_length = config(lr_schedule="constant", warmup_steps=10)
    assert float(lr_at(mx.array(4), 1.0, unknown_length, 0)) == pytest.approx(0.5)


def test_stream_forms_are_rebatched():
    data = sparse_data(n=2048)
    cfg = config(lr_schedule="constant", num_epochs=2)
    chunks = [data[:100], data[100:1000], data[1000:]]
    trainer = SAETrainer(SAE.from_config(D, cfg), cfg)
    trainer.fit(chunks, val=data[:300], progress=False)
    assert trainer.step == 2 * (2048 // 256)
    trainer = SAETrainer(SAE.from_config(D, cfg), cfg)
    trainer.fit(lambda: iter(chunks), progress=False)
    assert trainer.step == 2 * (2048 // 256)
    generator = (c for c in chunks)
    with pytest.raises(SAEError, match="callable returning a fresh iterable"):
        SAETrainer(SAE.from_config(D, cfg), cfg).fit(generator, progress=False)
    with pytest.raises(SAEError, match="tokens_per_epoch"):
        cosine = config(lr_schedule="cosine")
        SAETrainer(SAE.from_config(D, cosine), cosine).fit(lambda: iter(chunks), progress=False)
    with pytest.raises(SAEError, match="fewer than batch_size"):
        SAETrainer(SAE.from_config(D, cfg), cfg).fit(data[:100], progress=False)
    with pytest.raises(SAEError, match="d_model=16"):
        SAETrainer(SAE.from_config(D, cfg), cfg).fit(data[:, :8], progress=False)
    with pytest.raises(SAEError, match="d_model is unknown"):
        train_sae_on_activations(lambda: iter(chunks), cfg, progress=False)


def test_dead_latents_trigger_auxk_and_resampling():
    # Data in a 4-dim subspace leaves most of the 64 latents without inputs that select them.
    data = sparse_data(n=8192, subspace=4)
    cfg = config(dead_tokens_threshold=512, resample_dead_every=20, num_epochs=1)
    sae = SAE.from_config(D, cfg)
    trainer = SAETrainer(sae, cfg)
    trainer.fit(data, progress=False)
    assert max(h["dead_fraction"] for h in trainer.history) > 0.1
    assert max(h["auxk_loss"] for h in trainer.history) > 0
    # Right after a resampling (step 20) no latent is dead any more.
    trainer.counters["tokens_since_fired"] = mx.full((sae.d_hidden,), 10**6, dtype=mx.int32)
    resample_dead(trainer, mx.array(data[:256]))
    assert int(mx.max(trainer.counters["tokens_since_fired"])) == 0
    np.testing.assert_allclose(np.linalg.norm(np.array(sae.W_dec), axis=-1), 1, rtol=1e-5)


def test_batchtopk_learns_threshold_and_relu_uses_l1():
    data = sparse_data()
    sae = train_sae_on_activations(data, config(architecture="batchtopk"), progress=False)
    assert float(sae.threshold) > 0
    l0 = float(mx.mean(mx.sum(sae.encode(mx.array(data[:512])) > 0, axis=-1)))
    assert 1 <= l0 <= 12
    dense = train_sae_on_activations(data, config(architecture="relu", l1_coefficient=0.0, num_epochs=10),
                                     progress=False)
    sparse = train_sae_on_activations(data, config(architecture="relu", l1_coefficient=1.0, num_epochs=10),
                                      progress=False)
    l0_of = lambda s: float(mx.mean(mx.sum(s.encode(mx.array(data[:512])) > 0, axis=-1)))
    assert l0_of(sparse) < 0.5 * l0_of(dense)


def test_resume_from_checkpoint_continues_identically(tmp_path, monkeypatch):
    data = sparse_data(n=2560)
    cfg = config(num_epochs=2, checkpoint_every=7, dead_tokens_threshold=300, log_every=3)
    straight = train_sae_on_activations(data, cfg, save_path=tmp_path / "a.mlx", progress=False)
    assert not checkpoint_path(tmp_path / "a.mlx").exists()

    save = train_module.save_checkpoint

    def save_then_crash(trainer, path):
        save(trainer, path)
        if trainer.step == 14:  # in the second epoch
            raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        train_sae_on_activations(data, cfg, save_path=tmp_path / "b.mlx", progress=False)
    monkeypatch.setattr(train_module, "save_checkpoint", save)
    ckpt = checkpoint_path(tmp_path / "b.mlx")
    _, header = read_tensors(ckpt, CHECKPOINT_FORMAT, 1, "checkpoint")
    assert (header["step"], header["epoch"]) == (14, 1)
    resumed = train_sae_on_activations(data, cfg, save_path=tmp_path / "b.mlx", progress=False)
    for name, value in straight.parameters().items():
        if isinstance(value, mx.array):
            np.testing.assert_array_equal(np.array(value), np.array(resumed[name]), err_msg=name)
    assert resumed.metadata["training"]["steps"] == straight.metadata["training"]["steps"] == 20
    assert not ckpt.exists() and (tmp_path / "b.mlx").exists()
    # A checkpoint of another config is refused rather than silently mixed in.
    with pytest.raises(KeyboardInterrupt):
        monkeypatch.setattr(train_module, "save_checkpoint", save_then_crash)
        train_sae_on_activations(data, cfg, save_path=tmp_path / "c.mlx", progress=False)
    monkeypatch.setattr(train_module, "save_checkpoint", save)
    with pytest.raises(SAEError, match="different SAE or config"):
        train_sae_on_activations(data, config(num_epochs=2, checkpoint_every=7, k=3), save_path=tmp_path / "c.mlx",
                                 progress=False)


def test_nan_inputs_fail_fast_without_writing(tmp_path):
    data = sparse_data(n=4096)
    bad_start = data.copy()
    bad_start[3, 2] = np.nan
    with pytest.raises(SAEError, match="NaN or inf"):
        train_sae_on_activations(bad_start, config(), save_path=tmp_path / "x.mlx", progress=False)
    assert not os.listdir(tmp_path)

    cfg = config(checkpoint_every=5, log_every=5, lr_schedule="constant")
    batches = [data[i : i + 256] for i in range(0, 4096, 256)]
    batches[7] = batches[7].copy()
    batches[7][0, 0] = np.inf
    with pytest.raises(SAEError, match=r"NaN or inf \(in steps 6\.\.10\)"):
        train_sae_on_activations(lambda: iter(batches), cfg, d_model=D, save_path=tmp_path / "y.mlx",
                                 init_sample=data[:1024], progress=False)
    # The good step-5 checkpoint survives; nothing else was written.
    assert sorted(os.listdir(tmp_path)) == ["y.mlx.checkpoint"]
    _, header = read_tensors(tmp_path / "y.mlx.checkpoint", CHECKPOINT_FORMAT, 1, "checkpoint")
    assert header["step"] == 5


def test_diverging_loss_is_reported():
    with pytest.raises(SAEError, match="lower learning_rate"):
        train_sae_on_activations(sparse_data(), config(learning_rate=1e30, gradient_clip=None, warmup_steps=0),
                                 progress=False)


def test_wandb_offline_logs_train_and_val_keys(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    logged: list[dict] = []
    real_init = wandb.init

    def init(**kwargs):
        run = real_init(**kwargs)
        real_log = run.log
        run.log = lambda data, **kw: (logged.append(dict(data)), real_log(data, **kw))[1]
        return run

    monkeypatch.setattr(wandb, "init", init)
    cfg = config(use_wandb=True, wandb_project="mlxterp-test", wandb_name="unit", wandb_tags=["test"],
                 validation_split=0.1)
    train_sae_on_activations(sparse_data(n=2048), cfg, progress=False)
    keys = set().union(*logged)
    for key in ("train/loss", "train/recon_loss", "train/l0", "train/dead_fraction", "train/l1_loss",
                "train/learning_rate", "val/loss", "val/l0", "val/dead_fraction"):
        assert key in keys
    assert list((tmp_path / "wandb").glob("offline-run-*"))
