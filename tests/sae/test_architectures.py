"""JumpReLU and Matryoshka BatchTopK training on small arrays (no LM): the thresholds' pseudo-
derivatives, L0 tracking its target, nested prefixes, bad settings, files and exports."""

import mlx.core as mx
import numpy as np
import pytest

from mlxterp.errors import SAEError
from mlxterp.sae import load_sae
from mlxterp.sae.config import SAEConfig
from mlxterp.sae.jumprelu import initial_threshold, jumprelu_functions, l0_penalty
from mlxterp.sae.matryoshka import prefix_fvu, resolve_prefixes
from mlxterp.sae.model import SAE
from mlxterp.sae.train import SAETrainer

from test_train import D, config, sparse_data


def train(data, **kw):
    cfg = config(**kw)
    sae = SAE.from_config(D, cfg)
    trainer = SAETrainer(sae, cfg)
    trainer.fit(data, progress=False)
    return sae, trainer


def active_per_token(sae, x):
    return float(mx.mean(mx.sum(sae.encode(mx.array(x)) > 0, axis=-1)))


# -- JumpReLU ------------------------------------------------------------------------------------
def test_jumprelu_pseudo_derivatives_reach_the_thresholds():
    eps = 0.2
    codes, l0 = jumprelu_functions(eps)
    z = mx.array([[1.05, 0.3, -0.5], [0.95, 0.92, 2.0], [0.5, 1.5, 0.05]])
    theta = mx.array([1.0, 1.0, 0.0])
    np.testing.assert_allclose(np.array(codes(z, theta)), [[1.05, 0, 0], [0, 0, 2.0], [0, 1.5, 0.05]], rtol=1e-6)
    assert float(l0(z, theta)) == pytest.approx(4 / 3)
    # d sum(codes) / d theta_i = -(theta_i / eps) * #(tokens within eps/2 of theta_i): tokens 0 and 1
    # for latent 0, token 1 for latent 1, none for latent 2 (its threshold is 0, so the factor is 0).
    g_theta = np.array(mx.grad(lambda t: mx.sum(codes(z, t)))(theta))
    np.testing.assert_allclose(g_theta, [-2 * 1.0 / eps, -1 * 1.0 / eps, 0.0], rtol=1e-6)
    g_z = np.array(mx.grad(lambda a: mx.sum(codes(a, theta)))(z))
    np.testing.assert_array_equal(g_z, np.array(codes(z, theta)) != 0)  # the ordinary gradient where active
    # The L0 moves both ways: d L0 / d theta < 0 where tokens sit at the threshold, d L0 / d z > 0 there.
    g_z_l0, g_theta_l0 = (np.array(g) for g in mx.grad(l0, argnums=(0, 1))(z, theta))
    np.testing.assert_allclose(g_theta_l0, [-2 / (3 * eps), -1 / (3 * eps), -1 / (3 * eps)], rtol=1e-6)
    np.testing.assert_allclose(g_z_l0.sum(axis=0), -g_theta_l0, rtol=1e-6)
    # Above the target the penalty's gradient raises the thresholds; below it, it lowers them.
    for target, sign in ((1, -1), (3, 1)):
        g = np.array(mx.grad(lambda t: l0_penalty(l0(z, t), target))(theta))
        assert np.all(np.sign(g[g != 0]) == sign) and np.any(g != 0)


def test_jumprelu_thresholds_move_and_the_l0_tracks_its_target():
    data = sparse_data(n=4096)
    held = sparse_data(n=1024, seed=5)
    l0s = {}
    for k in (2, 6):
        sae, trainer = train(data, architecture="jumprelu", k=k, num_epochs=6)
        start = np.array(SAE.from_config(D, config(architecture="jumprelu", k=k)).threshold)
        threshold = np.array(sae.threshold)
        # Initialized at the sample's BatchTopK threshold (one value), then learned per latent.
        assert np.ptp(threshold) > 0.05 and np.all(threshold != start)
        assert abs(trainer.history[-1]["l0"] / k - 1) <= 0.2
        l0s[k] = active_per_token(sae, held)
        assert abs(l0s[k] / k - 1) <= 0.25, (k, l0s[k])  # held-out tokens, same codes as in training
        assert trainer.history[-1]["fvu"] < 0.75 * trainer.history[0]["fvu"]
        assert all(h["l0_loss"] >= 0 for h in trainer.history)
    assert l0s[6] > 2 * l0s[2]


def test_initial_threshold_keeps_k_per_token_on_the_sample():
    pre = mx.maximum(mx.random.normal((200, 64), key=mx.random.key(0)), 0)
    thr = initial_threshold(pre, 5)
    assert float(mx.sum(pre >= thr)) == 1000


def test_jumprelu_l0_targets_that_cannot_be_or_were_not_met_are_errors(tmp_path):
    data = sparse_data(n=2048)
    with pytest.raises(SAEError, match="every one of the 64 latents"):
        SAETrainer(SAE.from_config(D, config(architecture="jumprelu", k=64)), config(architecture="jumprelu", k=64))
    # A ReLU encoder fires about half of its 64 latents at initialization; 48 is out of reach.
    cfg = config(architecture="jumprelu", k=48)
    with pytest.raises(SAEError, match=r"k=48 cannot be met: with no threshold at all only \d+\.\d of the 64"):
        SAETrainer(SAE.from_config(D, cfg), cfg).fit(data, progress=False)
    # A feeble penalty and a large LR: the L0 falls far below its target and the run says so.
    cfg = config(architecture="jumprelu", k=24, l0_coefficient=1e-4, learning_rate=2e-2, num_epochs=2)
    trainer = SAETrainer(SAE.from_config(D, cfg), cfg)
    with pytest.raises(SAEError, match=r"L0 target k=24 was not met.*raise l0_coefficient.*lower k") as err:
        trainer.fit(data, save_path=tmp_path / "j.mlx", progress=False)
    assert "Nothing was saved" in str(err.value) and not (tmp_path / "j.mlx").exists()


def test_jumprelu_file_checkpoint_and_saelens_round_trip(tmp_path):
    data = sparse_data(n=2048)
    sae, _ = train(data, architecture="jumprelu", k=4, num_epochs=4)
    x = mx.array(data[:200])
    sae.save(tmp_path / "j.mlx")
    back = SAE.load(tmp_path / "j.mlx")
    assert back.architecture == "jumprelu" and back.metadata["training"]["config"]["architecture"] == "jumprelu"
    np.testing.assert_array_equal(np.array(back.threshold), np.array(sae.threshold))
    np.testing.assert_array_equal(np.array(back.encode(x)), np.array(sae.encode(x)))
    sae.save(tmp_path / "lens", format="saelens")
    lens = load_sae(tmp_path / "lens")
    assert lens.architecture == "jumprelu"
    np.testing.assert_array_equal(np.array(lens.encode(x)) > 0, np.array(sae.encode(x)) > 0)
    np.testing.assert_allclose(np.array(lens(x)), np.array(sae(x)), rtol=1e-4, atol=1e-4)


# -- Matryoshka BatchTopK ------------------------------------------------------------------------
def test_matryoshka_prefixes_reconstruct_better_as_they_grow():
    data = sparse_data(n=4096)
    held = sparse_data(n=1024, seed=5)
    mat, trainer = train(data, architecture="matryoshka_batchtopk", matryoshka_prefixes=(16, 32), num_epochs=12)
    plain, _ = train(data, architecture="batchtopk", num_epochs=12)
    assert mat.metadata["matryoshka_prefixes"] == [16, 32, 64]
    ours, theirs = prefix_fvu(mat, held), prefix_fvu(plain, held, (16, 32, 64))
    assert ours[16] > ours[32] > ours[64]
    # The first latents serve every level: alone they reconstruct far better than a plain
    # BatchTopK SAE's first latents, at a small cost for the whole dictionary.
    assert ours[16] < 0.8 * theirs[16] and ours[32] < 0.8 * theirs[32]
    assert ours[64] < theirs[64] + 0.1
    last = trainer.history[-1]
    assert last["prefix_fvu"] > last["fvu"] and abs(active_per_token(mat, held) / 4 - 1) < 0.5


def test_matryoshka_prefix_sizes_are_checked():
    assert resolve_prefixes((), 9216, 32) == (576, 2304, 9216)
    assert resolve_prefixes((), 64, 8) == (16, 64)  # 64 / 16 = 4 latents is below k
    assert resolve_prefixes((16, 64), 64, 4) == (16, 64)
    mat = dict(architecture="matryoshka_batchtopk")
    for bad, message in (((16, 8), "strictly increasing"), ((0, 8), "positive"), ((8, 8), "strictly increasing"),
                         ("16", "list of latent counts"), ((8.0,), "list of latent counts")):
        with pytest.raises(SAEError, match=message):
            SAEConfig(**mat, matryoshka_prefixes=bad)
    with pytest.raises(SAEError, match="only applies to architecture='matryoshka_batchtopk'"):
        SAEConfig(matryoshka_prefixes=(8,))
    cfg = config(**mat, matryoshka_prefixes=(16, 128))
    with pytest.raises(SAEError, match=r"beyond the dictionary's 64 latents.*raise expansion_factor"):
        SAETrainer(SAE.from_config(D, cfg), cfg)
    assert SAEConfig.from_dict(SAEConfig(**mat, matryoshka_prefixes=[8, 16]).to_dict()).matryoshka_prefixes == (8, 16)


def test_matryoshka_file_and_saelens_round_trip(tmp_path):
    data = sparse_data(n=2048)
    mat, _ = train(data, architecture="matryoshka_batchtopk", matryoshka_prefixes=(16,), num_epochs=2)
    x = mx.array(data[:200])
    mat.save(tmp_path / "m.mlx")
    back = SAE.load(tmp_path / "m.mlx")
    assert back.architecture == "matryoshka_batchtopk" and back.metadata["matryoshka_prefixes"] == [16, 64]
    assert float(back.threshold) == float(mat.threshold) > 0
    np.testing.assert_array_equal(np.array(back.encode(x)), np.array(mat.encode(x)))
    mat.save(tmp_path / "lens", format="saelens")  # SAELens keeps (Matryoshka) BatchTopK SAEs as JumpReLU
    lens = load_sae(tmp_path / "lens")
    assert lens.architecture == "jumprelu"
    np.testing.assert_array_equal(np.array(lens.encode(x)) > 0, np.array(mat.encode(x)) > 0)
    np.testing.assert_allclose(np.array(lens(x)), np.array(mat(x)), rtol=1e-4, atol=1e-4)
