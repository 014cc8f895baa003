"""SAE model: exact TopK sparsity, BatchTopK inference, normalization round trips, AuxK, helpers."""

import mlx.core as mx
import numpy as np
import pytest

from mlxterp.errors import SAEError
from mlxterp.sae.config import NORMALIZATION_SCHEMES, SAEConfig
from mlxterp.sae.model import SAE
from mlxterp.sae.ops import geometric_median, latent_totals, remove_parallel_component, unit_rows
from mlxterp.sae.normalize import denormalize, fit_normalizer, normalize


def raw_acts(n=64, d=8, seed=0, scale=30.0, offset=5.0):
    rng = np.random.default_rng(seed)
    return mx.array((rng.normal(size=(n, d)) * scale + offset).astype(np.float32))


def identity_sae(d, architecture="relu", normalization="none"):
    """An SAE whose latents are +e_i and -e_i, so decode(encode(x)) == x exactly."""
    eye = np.eye(d, dtype=np.float32)
    sae = SAE(d, 2 * d, k=2 * d, architecture=architecture, normalization=normalization)
    sae.W_enc = mx.array(np.concatenate([eye, -eye]))
    sae["W_dec"] = mx.array(np.concatenate([eye, -eye]))
    return sae


def test_topk_keeps_exactly_k_even_with_ties():
    d, h, k = 8, 32, 5
    sae = SAE(d, h, k=k)
    sae.W_enc = mx.ones((h, d)) / np.sqrt(d)  # every latent has the same pre-activation
    sae.b_enc = mx.ones((h,))
    codes = sae.encode(mx.ones((3, 7, d)))
    assert codes.shape == (3, 7, h)
    assert np.all(np.sum(np.array(codes) != 0, axis=-1) == k)
    acts, idx = sae.encode_sparse(mx.ones((3, 7, d)))
    assert acts.shape == idx.shape == (3, 7, k)


def test_topk_codes_are_the_largest_relu_preactivations():
    sae = SAE(8, 64, k=4, seed=1)
    sae.b_enc = mx.random.normal((64,), key=mx.random.key(3))
    x = raw_acts(d=8)
    pre = np.maximum(np.array(x @ sae.W_enc.T + sae.b_enc), 0)
    codes = np.array(sae.encode(x))
    expected = np.sort(pre, axis=-1)[:, -4:]
    np.testing.assert_allclose(np.sort(codes, axis=-1)[:, -4:], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.array(sae(x)), np.array(sae.decode(sae.encode(x))), rtol=1e-4, atol=1e-4)


def test_batchtopk_inference_uses_threshold_not_batch():
    sae = SAE(8, 64, k=4, architecture="batchtopk", seed=2)
    sae.b_enc = mx.random.normal((64,), key=mx.random.key(5))
    sae.threshold = mx.array(0.7)
    x = raw_acts(n=16, d=8, scale=1.0, offset=0.0)
    together = np.array(sae.encode(x))
    alone = np.concatenate([np.array(sae.encode(x[i : i + 1])) for i in range(16)])
    # Which latents fire is exact; their values differ by BLAS blocking across row counts.
    np.testing.assert_array_equal(together > 0, alone > 0)
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-6)
    assert together[together > 0].min() > 0.7
    # Training keeps exactly n*k activations over the batch (no ties in random data).
    out = sae.forward(x)
    assert int(mx.sum(out.top_acts > 0)) == 16 * 4 and out.top_indices is None


@pytest.mark.parametrize("scheme", NORMALIZATION_SCHEMES)
def test_normalization_round_trip(scheme):
    x = raw_acts(n=200, d=8)
    stats = fit_normalizer(scheme, x)
    x_n, token_norm = normalize(scheme, stats, x)
    np.testing.assert_allclose(np.array(denormalize(scheme, stats, x_n, token_norm)), np.array(x), rtol=1e-4, atol=1e-3)
    if scheme == "expected_norm":
        assert float(mx.mean(mx.sum(x_n * x_n, axis=-1))) == pytest.approx(8, rel=1e-4)
    if scheme == "standardize":
        np.testing.assert_allclose(np.array(x_n).std(0), 1, rtol=1e-3)
    if scheme == "unit_norm":
        np.testing.assert_allclose(np.linalg.norm(np.array(x_n), axis=-1), 1, rtol=1e-4)


@pytest.mark.parametrize("scheme", NORMALIZATION_SCHEMES)
@pytest.mark.parametrize("architecture", ["topk", "relu"])
def test_encode_decode_work_on_the_raw_scale(scheme, architecture):
    d = 6
    x = raw_acts(n=50, d=d).reshape(5, 10, d)
    sae = identity_sae(d, architecture, scheme)
    sae.fit_normalization(x)
    sae.init_b_dec(x, "mean")
    codes = sae.encode(x)
    token_norm = sae.token_norm(x)
    assert (token_norm is None) == (scheme != "unit_norm")
    np.testing.assert_allclose(np.array(sae.decode(codes, token_norm)), np.array(x), rtol=1e-4, atol=2e-3)
    np.testing.assert_allclose(np.array(sae(x)), np.array(x), rtol=1e-4, atol=2e-3)
    assert sae.metadata["normalization"]["scheme"] == scheme
    if scheme == "unit_norm":
        with pytest.raises(SAEError, match="token_norm"):
            sae.decode(codes)


def test_forward_losses():
    x = raw_acts(n=32, d=8, scale=1.0)
    sae = SAE(8, 32, k=3)
    out = sae.forward(x)
    err = np.array(x) - np.array(out.sae_out)
    centred = np.array(x) - np.array(x).mean(0)
    assert float(out.fvu) == pytest.approx((err**2).sum() / (centred**2).sum(), rel=1e-4)
    assert float(out.recon_loss) == pytest.approx((err**2).mean(), rel=1e-4)
    assert float(out.l0) <= 3 and float(out.auxk_loss) == 0
    no_dead = sae.forward(x, dead_mask=mx.zeros((32,), dtype=mx.bool_), k_aux=4)
    assert float(no_dead.auxk_loss) == 0
    all_dead = sae.forward(x, dead_mask=mx.ones((32,), dtype=mx.bool_), k_aux=4)
    assert float(all_dead.auxk_loss) > 0


def test_latent_totals_sparse_matches_dense():
    acts = mx.array([[1.0, 0.0], [2.0, 3.0]])
    idx = mx.array([[0, 2], [2, 1]], dtype=mx.int32)
    dense = mx.array([[1.0, 0.0, 0.0], [0.0, 3.0, 2.0]])
    for a, b in zip(latent_totals(acts, idx, 3), latent_totals(dense, None, 3)):
        np.testing.assert_allclose(np.array(a), np.array(b))
    counts, _, maxes = latent_totals(acts, idx, 3)
    assert np.array(counts).tolist() == [1, 1, 1] and np.array(maxes).tolist() == [1, 3, 2]


def test_gradient_projection_is_orthogonal_to_rows():
    w = unit_rows(mx.random.normal((10, 6), key=mx.random.key(0)))
    g = mx.random.normal((10, 6), key=mx.random.key(1))
    p = remove_parallel_component(g, w)
    np.testing.assert_allclose(np.sum(np.array(p) * np.array(w), axis=-1), 0, atol=1e-5)
    # What was removed is each row's own direction: g - p is parallel to w, scaled by <g, w>.
    removed = np.array(g - p)
    expected = np.sum(np.array(g) * np.array(w), axis=-1, keepdims=True) * np.array(w)
    np.testing.assert_allclose(removed, expected, atol=1e-5)


def numpy_weiszfeld(points, iters=2000):
    guess = points.mean(0)
    for _ in range(iters):
        w = 1 / np.maximum(np.linalg.norm(points - guess, axis=1), 1e-12)
        guess = (w[:, None] * points).sum(0) / w.sum()
    return guess


def test_geometric_median_matches_numpy_and_resists_outliers():
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(300, 5))
    pts[:20] += 1000.0
    ref = numpy_weiszfeld(pts)
    got = np.array(geometric_median(mx.array(pts.astype(np.float32)), max_iter=500))
    np.testing.assert_allclose(got, ref, atol=1e-3)
    assert np.linalg.norm(got) < 1.0  # the mean is dragged ~67 away; the median is not
    dists = lambda c: np.linalg.norm(pts - c, axis=1).sum()
    assert dists(got) <= dists(pts.mean(0))


def test_init_b_dec_methods():
    x = raw_acts(n=100, d=4)
    sae = SAE(4, 8, k=2)
    sae.init_b_dec(x, "mean")
    np.testing.assert_allclose(np.array(sae.b_dec), np.array(x).mean(0), rtol=1e-5)
    sae.initialize_geometric_median(x)
    assert not np.allclose(np.array(sae.b_dec), np.array(x).mean(0))
    sae.init_b_dec(x, "zeros")
    assert not np.any(np.array(sae.b_dec))
    with pytest.raises(SAEError, match="b_dec_init"):
        sae.init_b_dec(x, "median")


def test_init_and_tied_weights():
    sae = SAE(8, 32, k=4, seed=3)
    np.testing.assert_allclose(np.linalg.norm(np.array(sae.W_dec), axis=-1), 1, rtol=1e-5)
    np.testing.assert_array_equal(np.array(sae.W_enc), np.array(sae.W_dec))
    tied = SAE(8, 32, k=4, tied_weights=True)
    assert "W_dec" not in tied.trainable_parameters()
    assert tied.W_dec is tied.W_enc
    assert set(tied.trainable_parameters()) == {"W_enc", "b_enc", "b_dec"}


def test_shape_errors():
    sae = SAE(8, 32, k=4)
    with pytest.raises(SAEError, match="d_model=8"):
        sae.encode(mx.zeros((2, 7)))
    with pytest.raises(SAEError, match="d_hidden=32"):
        sae.decode(mx.zeros((2, 31)))
    with pytest.raises(SAEError, match="k=40 exceeds d_hidden=32"):
        SAE(8, 32, k=40)
    with pytest.raises(SAEError, match="architecture"):
        SAE(8, 32, architecture="gated")
    with pytest.raises(SAEError, match="encode_sparse"):
        SAE(8, 32, architecture="relu").encode_sparse(mx.zeros((1, 8)))


def test_from_config_and_metadata():
    cfg = SAEConfig(expansion_factor=4, k=3, tied_weights=True, normalize_input="standardize", context_length=64)
    sae = SAE.from_config(8, cfg)
    assert (sae.d_model, sae.d_hidden, sae.k, sae.normalization) == (8, 32, 3, "standardize")
    meta = sae.metadata
    for key in ("layer", "component", "model_name", "d_model", "d_hidden", "k", "architecture", "normalization"):
        assert key in meta
    assert meta["context_length"] == 64 and meta["drop_first_tokens"] == 1
    sae.metadata = {"layer": 3}
    assert sae.metadata["layer"] == 3 and sae.metadata["d_model"] == 8


class FakeModel:
    def __init__(self, name="tiny", d_model=8, n_layers=4):
        self.name, self.d_model, self.n_layers = name, d_model, n_layers


def test_is_compatible():
    sae = SAE(8, 16, k=2)
    assert not sae.is_compatible(FakeModel(), layer=1, component="mlp")
    sae.metadata.update(model_name="tiny", layer=1, component="attn")
    assert sae.is_compatible(FakeModel(), layer=1, component="self_attn")
    assert sae.is_compatible(FakeModel(), layer=-3, component="attn")
    assert sae.is_compatible(FakeModel())
    assert not sae.is_compatible(FakeModel(), layer=2, component="attn")
    assert not sae.is_compatible(FakeModel(), layer=1, component="mlp")
    assert not sae.is_compatible(FakeModel(name="other"), layer=1, component="attn")
    assert not sae.is_compatible(FakeModel(d_model=16), layer=1, component="attn")
    sae.metadata["component"] = "output"
    assert sae.is_compatible(FakeModel(), layer=1, component="resid")
