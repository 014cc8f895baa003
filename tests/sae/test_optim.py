"""The optimizers of SAE training: sign descent, the schedule-free average, and how the trainer uses it."""

import mlx.core as mx
import numpy as np
import pytest

from mlxterp.errors import SAEError
from mlxterp.sae.config import SAEConfig
from mlxterp.sae.metrics import evaluate_reconstruction
from mlxterp.sae.model import SAE
from mlxterp.sae.optim import SCHEDULE_FREE_MOMENTUM, apply_update, make_optimizer
from mlxterp.sae.resample import resample_dead
from mlxterp.sae.train import SAETrainer

from test_train import D, config, sparse_data


def random_grads(sae, seed):
    rng = np.random.default_rng(seed)
    return {k: mx.array(rng.normal(size=v.shape).astype(np.float32)) for k, v in sae.trainable_parameters().items()}


def test_signum_schedule_free_steps_z_by_the_sign_and_averages_it():
    """z moves by lr * sign(g) per element; x is the plain mean of z_1..z_t at a constant LR; the SAE
    holds y = (1 - b) z + b x (biases: no unit-norm rows to keep)."""
    cfg = SAEConfig(optimizer="signum", lr_schedule="schedule_free")
    sae = SAE(8, 32, k=4, seed=1)
    opt = make_optimizer(cfg, 0.01, sae.trainable_parameters())
    start = np.array(sae.b_enc)
    zs = []
    for step in range(4):
        grads = random_grads(sae, step)
        z_before = np.array(opt.state["b_enc"]["sf_z"])
        apply_update(sae, opt, grads, mx.array(0.01), "W_dec", 1.0)
        z = np.array(opt.state["b_enc"]["sf_z"])
        np.testing.assert_allclose(z - z_before, -0.01 * np.sign(np.array(grads["b_enc"])), atol=1e-7)
        zs.append(z)
        x = np.array(opt.state["b_enc"]["sf_x"])
        np.testing.assert_allclose(x, np.mean(zs, axis=0), atol=1e-6)
        b = SCHEDULE_FREE_MOMENTUM
        np.testing.assert_allclose(np.array(sae.b_enc), (1 - b) * z + b * x, atol=1e-6)
    assert not np.allclose(np.array(sae.b_enc), start)
    # Decoder rows stay unit norm in the iterate and in the point the gradient is taken at.
    np.testing.assert_allclose(np.linalg.norm(np.array(opt.state["W_dec"]["sf_z"]), axis=-1), 1, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(np.array(sae.W_dec), axis=-1), 1, rtol=1e-5)


def test_schedule_free_average_weights_warmup_steps_by_lr_squared():
    cfg = SAEConfig(lr_schedule="schedule_free")
    sae = SAE(8, 32, k=4, seed=2)
    opt = make_optimizer(cfg, 1e-2, sae.trainable_parameters())
    zs, weights = [], []
    for step, lr in enumerate([2.5e-3, 5e-3, 1e-2, 1e-2]):
        apply_update(sae, opt, random_grads(sae, 10 + step), mx.array(lr), "W_dec", None)
        zs.append(np.array(opt.state["b_dec"]["sf_z"]))
        weights.append(lr**2)
    expected = np.average(zs, axis=0, weights=weights)
    np.testing.assert_allclose(np.array(opt.state["b_dec"]["sf_x"]), expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("optimizer", ["adam", "signum"])
def test_schedule_free_training_ends_on_the_average_and_validates_it(optimizer):
    data = sparse_data(n=4096)
    cfg = config(optimizer=optimizer, lr_schedule="schedule_free", num_epochs=2, validation_split=0.1)
    sae = SAE.from_config(D, cfg)
    trainer = SAETrainer(sae, cfg)
    metrics = trainer.fit(data, progress=False)
    for name, value in sae.trainable_parameters().items():
        average = np.array(trainer.optimizer.state[name]["sf_x"])
        if name == "W_dec":  # the average's rows, scaled back to unit norm
            assert np.linalg.norm(average, axis=-1).min() < 0.999
            average /= np.linalg.norm(average, axis=-1, keepdims=True)
        np.testing.assert_allclose(np.array(value), average, rtol=1e-6, atol=1e-7, err_msg=name)
    held = data[np.random.default_rng(cfg.seed).permutation(len(data))[: int(len(data) * 0.1)]]
    assert metrics["val/fvu"] == pytest.approx(float(evaluate_reconstruction(sae, [mx.array(held)])["fvu"]), rel=1e-5)
    assert metrics["val/fvu"] < 0.9 * trainer.history[0]["fvu"]  # the average carries early iterates too


def test_signum_uses_its_own_lr_rule_and_bad_optimizer_is_refused():
    assert SAEConfig(optimizer="signum").resolved_learning_rate(2**14) == pytest.approx(5e-3)
    assert SAEConfig(optimizer="signum").resolved_learning_rate(2**16) == pytest.approx(2.5e-3)
    assert SAEConfig(optimizer="adam").resolved_learning_rate(2**14) == pytest.approx(2.25e-3)
    with pytest.raises(SAEError, match="optimizer='sgd' is not supported: use one of 'adam', 'signum'"):
        SAEConfig(optimizer="sgd")
    with pytest.raises(ValueError, match="lr_schedule"):
        SAEConfig(lr_schedule="linear")


def test_resampling_resets_the_schedule_free_iterate_and_average():
    data = sparse_data(n=2048, subspace=4)
    cfg = config(optimizer="signum", lr_schedule="schedule_free", dead_tokens_threshold=512)
    sae = SAE.from_config(D, cfg)
    trainer = SAETrainer(sae, cfg)
    trainer.fit(data, progress=False)
    trainer.counters["tokens_since_fired"] = mx.array(np.r_[np.full(8, 10**6), np.zeros(sae.d_hidden - 8)],
                                                      dtype=mx.int32)
    resample_dead(trainer, mx.array(data[:256]))
    for name in ("W_enc", "W_dec", "b_enc"):
        for point in ("sf_z", "sf_x"):
            np.testing.assert_array_equal(np.array(trainer.optimizer.state[name][point][:8]),
                                          np.array(sae[name][:8]), err_msg=f"{name} {point}")
