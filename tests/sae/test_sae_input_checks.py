"""SAE inputs that would give NaN codes or NaN metrics are refused with a message."""

import mlx.core as mx
import numpy as np
import pytest

from mlxterp import SAE, SAEConfig, train_sae_on_activations
from mlxterp.errors import SAEError
from mlxterp.sae.metrics import evaluate_reconstruction

D = 16


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("architecture", ["topk", "relu", "batchtopk"])
def test_encode_refuses_non_finite_activations(bad, architecture):
    sae = SAE(D, 32, k=4, architecture=architecture)
    x = mx.random.normal((2, 3, D), key=mx.random.key(0))
    good = sae.encode(x)
    assert good.shape == (2, 3, 32) and bool(mx.all(mx.isfinite(good)))
    x[1, 2, 5] = bad
    with pytest.raises(SAEError, match="contain NaN or inf"):
        sae.encode(x)
    if architecture == "topk":
        with pytest.raises(SAEError, match="contain NaN or inf"):
            sae.encode_sparse(x)


def test_constant_training_data_is_refused_before_training():
    acts = np.tile(np.arange(D, dtype=np.float32), (600, 1))
    config = SAEConfig(k=4, expansion_factor=2, batch_size=128, validation_split=0.0, checkpoint_every=None)
    with pytest.raises(SAEError, match="training activations are constant"):
        train_sae_on_activations(acts, config, progress=False)
    noisy = acts + np.random.default_rng(0).normal(size=acts.shape).astype(np.float32)
    sae = train_sae_on_activations(noisy, config, progress=False)  # varied data still trains
    assert bool(mx.all(mx.isfinite(sae.encode(mx.array(noisy[:10])))))


def test_evaluating_constant_activations_says_fvu_is_undefined():
    sae = SAE(D, 32, k=4)
    with pytest.raises(SAEError, match="all the same vector, so FVU .* is undefined"):
        evaluate_reconstruction(sae, [np.ones((50, D), np.float32)])
    metrics = evaluate_reconstruction(sae, [np.random.default_rng(1).normal(size=(50, D)).astype(np.float32)])
    assert np.isfinite(metrics["fvu"])
