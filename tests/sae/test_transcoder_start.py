"""A transcoder's start (initialize.start_transcoder): decoder and skip term at zero, pre-activations
centred, decoder rows left free in training; on a sparse MLP-like map the first steps lower the loss."""

import mlx.core as mx
import numpy as np
import pytest

from mlxterp.sae.config import SAEConfig
from mlxterp.sae.initialize import initialize
from mlxterp.sae.model import SAE
from mlxterp.sae.train import SAETrainer

D = 16
CONFIG = SAEConfig(k=4, expansion_factor=4, batch_size=256, num_epochs=3, validation_split=0.0,
                   checkpoint_every=None, log_every=8, warmup_steps=10)


def sparse_mlp_rows(n: int, seed: int = 0) -> np.ndarray:
    """Rows [x | y] (n, 2 * D): x with a large mean (like a norm's output), y = a ReLU layer of 64
    units that each fire on a few percent of the tokens, plus a linear part and an offset."""
    rng = np.random.default_rng(seed)
    mean = rng.normal(size=D) * 3
    x = rng.normal(size=(n, D)) + mean
    w_in = rng.normal(size=(64, D)) / np.sqrt(D)
    bias = -1.5 - w_in @ mean
    w_out = rng.normal(size=(64, D))
    linear = rng.normal(size=(D, D)) * 0.3 / np.sqrt(D)
    y = np.maximum(x @ w_in.T + bias, 0) @ w_out + x @ linear.T + 2.0
    return np.concatenate([x, y], axis=1).astype(np.float32)


@pytest.mark.parametrize("skip", [False, True])
def test_a_transcoder_starts_at_its_targets_centre_with_centred_preactivations(skip):
    rows = mx.array(sparse_mlp_rows(4096))
    sae = SAE.from_config(D, CONFIG, transcode=True, skip=skip)
    initialize(sae, rows, CONFIG)
    assert float(mx.max(mx.abs(sae.W_dec))) == 0
    if skip:
        assert float(mx.max(mx.abs(sae.W_skip))) == 0
    # The output is b_dec (the targets' geometric median), so FVU starts at ~1; random unit decoder
    # rows (an SAE's start) start it several times higher.
    out = sae.forward(rows)
    assert 0.99 < float(out.fvu) < 1.1
    x_n = sae._centred(sae.split_rows(rows)[0])
    pre = x_n @ sae.W_enc.T + sae.b_enc
    spread = float(mx.mean(mx.std(pre, axis=0)))
    assert float(mx.max(mx.abs(mx.mean(pre, axis=0)))) < 1e-3 * spread


def test_an_sae_keeps_its_random_unit_decoder_at_the_start():
    rows = mx.array(sparse_mlp_rows(2048)[:, :D])
    sae = SAE.from_config(D, CONFIG)
    before = np.array(sae.W_dec)
    initialize(sae, rows, CONFIG)
    np.testing.assert_array_equal(np.array(sae.W_dec), before)
    np.testing.assert_allclose(np.linalg.norm(before, axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("skip", [False, True])
def test_a_transcoder_trains_from_zero_with_free_decoder_rows(skip):
    rows = mx.array(sparse_mlp_rows(8192))
    sae = SAE.from_config(D, CONFIG, transcode=True, skip=skip)
    trainer = SAETrainer(sae, CONFIG)
    trainer.fit(rows, progress=False)
    fvu = [h["fvu"] for h in trainer.history]
    assert np.all(np.isfinite(fvu)) and bool(mx.all(mx.isfinite(sae.W_dec)))
    # The first steps already lower the loss from ~1 (random unit rows, an SAE's start, began near 8 here).
    assert fvu[0] < 1.1
    assert fvu[-1] < 0.85 * fvu[0]
    # Rows grow from zero at the pace of the data, not renormalized to unit length after each step.
    norms = np.linalg.norm(np.array(sae.W_dec), axis=1)
    assert np.abs(norms - 1).max() > 0.1
