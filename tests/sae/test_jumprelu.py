"""JumpReLU SAEs: per-latent thresholds, files, BatchTopK conversion, feature tools on a model."""

import mlx.core as mx
import numpy as np
import pytest

from mlxterp import InterpretableModel
from mlxterp.errors import SAEError
from mlxterp.features import feature_directions, splice_sae
from mlxterp.sae.model import SAE
from tiny_models import byte_tokenizer, tiny_model


def jumprelu_sae(d_model=16, d_hidden=64, normalization="none", seed=0):
    sae = SAE(d_model, d_hidden, architecture="jumprelu", normalization=normalization, seed=seed)
    rng = np.random.default_rng(seed)
    sae.b_enc = mx.array(rng.standard_normal(d_hidden).astype(np.float32) * 0.2)
    sae.b_dec = mx.array(rng.standard_normal(d_model).astype(np.float32) * 0.2)
    sae.threshold = mx.array(rng.random(d_hidden).astype(np.float32))
    return sae


def reference_codes(sae, x):
    W_enc, b_enc, b_dec, thr = (np.array(a, np.float64) for a in (sae.W_enc, sae.b_enc, sae.b_dec, sae.threshold))
    pre = (x - b_dec) @ W_enc.T + b_enc
    return pre * (pre > thr)


def test_jumprelu_keeps_each_latent_above_its_own_threshold():
    sae = jumprelu_sae()
    x = np.random.default_rng(1).standard_normal((40, 16)).astype(np.float32) * 2
    codes = np.array(sae.encode(mx.array(x)))
    want = reference_codes(sae, x)
    np.testing.assert_allclose(codes, want, rtol=1e-5, atol=1e-5)
    assert np.array_equal(codes > 0, want > 0)
    # The thresholds are per latent: a single scalar (their mean) would fire a different set.
    pre = (x - np.array(sae.b_dec)) @ np.array(sae.W_enc).T + np.array(sae.b_enc)
    assert not np.array_equal(want > 0, pre > float(np.mean(np.array(sae.threshold))))
    recon = sae.reconstruct(mx.array(x))
    np.testing.assert_allclose(np.array(recon.reconstruction), want @ np.array(sae.W_dec) + np.array(sae.b_dec),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.array(sae.decode(mx.array(codes))), np.array(recon.reconstruction), atol=1e-5)


def test_jumprelu_file_round_trip_keeps_the_threshold_vector(tmp_path):
    sae = jumprelu_sae(normalization="standardize")
    sae.fit_normalization(mx.random.normal((50, 16), key=mx.random.key(3)) * 2 + 1)
    sae.save(tmp_path / "j.mlx")
    loaded = SAE.load(tmp_path / "j.mlx")
    assert loaded.architecture == "jumprelu" and loaded.threshold.shape == (64,)
    np.testing.assert_array_equal(np.array(loaded.threshold), np.array(sae.threshold))
    x = mx.random.normal((8, 16), key=mx.random.key(4))
    np.testing.assert_array_equal(np.array(loaded.encode(x)), np.array(sae.encode(x)))


def test_batchtopk_converts_to_jumprelu():
    b = SAE(16, 64, k=4, architecture="batchtopk", normalization="expected_norm", seed=2)
    b.fit_normalization(mx.random.normal((50, 16), key=mx.random.key(5)) * 3)
    b.b_enc = mx.random.normal((64,), key=mx.random.key(6)) * 0.3
    b.threshold = mx.array(0.35)
    b.metadata["model_name"] = "m"
    j = b.to_jumprelu()
    x = mx.random.normal((30, 16), key=mx.random.key(7)) * 3
    assert j.architecture == "jumprelu" and j.threshold.shape == (64,) and j.metadata["model_name"] == "m"
    assert int(mx.sum(b.encode(x) > 0)) > 0
    np.testing.assert_array_equal(np.array(j.encode(x)), np.array(b.encode(x)))
    np.testing.assert_array_equal(np.array(j(x)), np.array(b(x)))
    with pytest.raises(SAEError, match="only a 'batchtopk'"):
        SAE(16, 64, k=4).to_jumprelu()


def test_jumprelu_splices_and_steers_on_a_model():
    model = InterpretableModel((tiny_model("llama", seed=3), byte_tokenizer()))
    sae = jumprelu_sae(d_model=model.d_model, d_hidden=128, seed=5)
    sae.threshold = sae.threshold * 0.1
    sae.hook_point = model.hook_point(1, "output")
    sae.attached_model = model
    prompt = "The quick brown fox"
    with model.trace(prompt):
        clean = model.layers[1].output.save()
    x = np.array(clean.value)
    with model.trace(prompt):
        splice_sae(sae, model, error_term=False)
        spliced = model.layers[1].output.save()
    np.testing.assert_allclose(np.array(spliced.value)[:, 1:], np.array(sae(mx.array(x[:, 1:]))), atol=1e-5)
    with model.trace(prompt):
        sae.steer(model=model, layer=1, feature_idx=7, strength=2.0)
        steered = model.layers[1].output.save()
    direction = np.array(feature_directions(sae, [7])[0])
    np.testing.assert_allclose(np.array(steered.value), x + 2.0 * direction, atol=1e-5)
    result = sae.analyze_text(model, prompt, top_k=3)
    np.testing.assert_allclose(result.codes, reference_codes(sae, x[0]), rtol=1e-4, atol=1e-5)
    assert result.top and all(result.codes[pos, f] == peak for f, peak, pos in result.top)
