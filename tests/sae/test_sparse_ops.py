"""Sparse TopK kernels against a dense autodiff reference: values and every gradient, eager and compiled.

Reference: pre = x W^T + b, the k largest per row by a full argsort, codes = relu(pre) on those
(zeros elsewhere, a dense (n, m) matrix), reconstruction = codes @ W_dec; gradients by MLX
autodiff through those dense ops. The kernels must match it to float32 round-off, for latent
counts where the blocked top-k applies and where it does not (m not divisible by powers of two,
k close to m), with ties, and under mx.compile.
"""

import mlx.core as mx
import numpy as np
import pytest

from mlxterp.sae import sparse_ops
from mlxterp.sae import streams as streams_module
from mlxterp.sae.sparse_ops import dense_from_topk, sparse_decode, topk_encode

# (n tokens, d_model, m latents, k)
SHAPES = [
    (64, 16, 512, 8),     # blocked: power-of-two m
    (37, 12, 1000, 4),    # blocked: m = 8 * 125
    (33, 12, 100, 7),     # block < 4: plain argpartition
    (20, 8, 1003, 3),     # odd m: no power of two divides it
    (24, 8, 96, 90),      # k close to m (negative pre-activations get selected)
    (16, 8, 40, 40),      # k == m
    (8, 32, 12288, 32),   # the benchmark's latent count
]
RTOL, ATOL = 2e-4, 2e-5


def make(n, d, m, k, seed=0, b_scale=0.1):
    rng = np.random.default_rng(seed)
    f = lambda *s: mx.array(rng.normal(size=s).astype(np.float32))  # noqa: E731
    return dict(x=f(n, d), W_enc=f(m, d) / np.sqrt(d), b_enc=f(m) * b_scale, W_dec=f(m, d) / np.sqrt(d),
                C=f(n, m), R=f(n, d), b_dec=f(d) * 0.3)


def reference_mask(x, W_enc, b_enc, k):
    """(n, m) 0/1 mask of the k largest pre-activations per row, by a full stable argsort."""
    pre = np.array(x @ W_enc.T + b_enc, dtype=np.float64)
    order = np.argsort(-pre, axis=-1, kind="stable")[:, :k]
    mask = np.zeros(pre.shape, dtype=np.float32)
    np.put_along_axis(mask, order, 1.0, axis=-1)
    return mx.array(mask)


def dense_loss(x, W_enc, b_enc, W_dec, C, R, mask, b_dec=None):
    """sum(codes * C) + sum(reconstruction * R) through dense codes (the reference)."""
    if b_dec is not None:
        x = x - b_dec
    codes = mx.maximum(x @ W_enc.T + b_enc, 0) * mask
    return mx.sum(codes * C) + mx.sum((codes @ W_dec) * R)


def sparse_loss(x, W_enc, b_enc, W_dec, C, R, k, b_dec=None):
    acts, idx = topk_encode(x, W_enc, b_enc, k, b_dec=b_dec)
    picked = mx.take_along_axis(C, mx.stop_gradient(idx), axis=-1)
    return mx.sum(acts * picked) + mx.sum(sparse_decode(acts, idx, W_dec) * R)


def close(a, b, rtol=RTOL, atol=ATOL):
    a, b = np.array(a, dtype=np.float64), np.array(b, dtype=np.float64)
    scale = max(1.0, float(np.abs(b).max()))
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol * scale)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "n{}-d{}-m{}-k{}".format(*s))
def test_topk_encode_forward_matches_argsort(shape):
    n, d, m, k = shape
    p = make(*shape)
    acts, idx = topk_encode(p["x"], p["W_enc"], p["b_enc"], k)
    assert acts.shape == idx.shape == (n, k) and idx.dtype == mx.int32
    idx_np = np.array(idx)
    assert all(len(set(row)) == k for row in idx_np), "indices repeat within a row"
    assert idx_np.min() >= 0 and idx_np.max() < m
    mask = np.array(reference_mask(p["x"], p["W_enc"], p["b_enc"], k))
    chosen = np.zeros_like(mask)
    np.put_along_axis(chosen, idx_np, 1.0, axis=-1)
    np.testing.assert_array_equal(chosen, mask)
    pre = np.array(p["x"] @ p["W_enc"].T + p["b_enc"])
    close(acts, np.maximum(np.take_along_axis(pre, idx_np, axis=-1), 0))


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("with_b_dec", [False, True], ids=["x", "x-b_dec"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "n{}-d{}-m{}-k{}".format(*s))
def test_encode_decode_gradients_match_dense_reference(shape, with_b_dec, compiled):
    n, d, m, k = shape
    p = make(*shape)
    b_dec = p["b_dec"] if with_b_dec else None
    x_ref = p["x"] - b_dec if with_b_dec else p["x"]
    mask = reference_mask(x_ref, p["W_enc"], p["b_enc"], k)
    argnums = (0, 1, 2, 3, 4)

    def sparse(x, W_enc, b_enc, W_dec, b_dec_):
        return sparse_loss(x, W_enc, b_enc, W_dec, p["C"], p["R"], k, b_dec=b_dec_ if with_b_dec else None)

    def dense(x, W_enc, b_enc, W_dec, b_dec_):
        return dense_loss(x, W_enc, b_enc, W_dec, p["C"], p["R"], mask, b_dec=b_dec_ if with_b_dec else None)

    sparse_vg = mx.value_and_grad(sparse, argnums=argnums)
    if compiled:
        sparse_vg = mx.compile(sparse_vg)
    args = (p["x"], p["W_enc"], p["b_enc"], p["W_dec"], p["b_dec"])
    value, grads = sparse_vg(*args)
    ref_value, ref_grads = mx.value_and_grad(dense, argnums=argnums)(*args)
    close(value, ref_value)
    names = ("x", "W_enc", "b_enc", "W_dec", "b_dec")
    for name, g, r in zip(names, grads, ref_grads):
        assert g.shape == r.shape, name
        close(g, r), name
    if not with_b_dec:
        assert not np.any(np.array(grads[4])), "b_dec was not an input, its gradient must be zero"


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("shape", [(16, 8, 64, 5), (9, 12, 1000, 32)], ids=["small", "m1000"])
def test_sparse_decode_gradient_wrt_acts_and_decoder(shape, compiled):
    n, d, m, k = shape
    rng = np.random.default_rng(1)
    acts = mx.array(rng.normal(size=(n, k)).astype(np.float32))
    idx = mx.array(np.stack([rng.choice(m, size=k, replace=False) for _ in range(n)]).astype(np.int32))
    W_dec = mx.array(rng.normal(size=(m, d)).astype(np.float32))
    R = mx.array(rng.normal(size=(n, d)).astype(np.float32))

    def sparse(a, W):
        return mx.sum(sparse_decode(a, idx, W) * R)

    def dense(a, W):
        return mx.sum((dense_from_topk(a, idx, m) @ W) * R)

    vg = mx.value_and_grad(sparse, argnums=(0, 1))
    if compiled:
        vg = mx.compile(vg)
    (value, (g_a, g_W)), (ref, (r_a, r_W)) = vg(acts, W_dec), mx.value_and_grad(dense, argnums=(0, 1))(acts, W_dec)
    close(value, ref)
    close(g_a, r_a)
    close(g_W, r_W)
    np_ref = np.einsum("nk,nkd->nd", np.array(acts), np.array(W_dec)[np.array(idx)])
    close(sparse_decode(acts, idx, W_dec), np_ref)


def test_ties_pick_k_distinct_latents_and_gradients_follow_the_pick():
    n, d, m, k = 12, 8, 256, 6
    rng = np.random.default_rng(2)
    # Integer weights and inputs: many exactly equal pre-activations per row.
    x = mx.array(rng.integers(-1, 2, size=(n, d)).astype(np.float32))
    W_enc = mx.array(rng.integers(-1, 2, size=(m, d)).astype(np.float32))
    b_enc = mx.zeros((m,))
    W_dec = mx.array(rng.normal(size=(m, d)).astype(np.float32))
    C = mx.array(rng.normal(size=(n, m)).astype(np.float32))
    R = mx.array(rng.normal(size=(n, d)).astype(np.float32))
    acts, idx = topk_encode(x, W_enc, b_enc, k)
    idx_np = np.array(idx)
    pre = np.array(x @ W_enc.T)
    assert all(len(set(row)) == k for row in idx_np)
    # Any valid pick: the chosen values are the k largest, as a multiset.
    np.testing.assert_array_equal(np.sort(np.take_along_axis(pre, idx_np, -1), -1), np.sort(pre, -1)[:, -k:])
    np.testing.assert_array_equal(np.array(acts), np.maximum(np.take_along_axis(pre, idx_np, -1), 0))
    # Gradients equal the dense reference restricted to the kernel's own pick.
    mask_np = np.zeros((n, m), np.float32)
    np.put_along_axis(mask_np, idx_np, 1.0, -1)
    mask = mx.array(mask_np)
    argnums = (0, 1, 2, 3)
    g = mx.grad(lambda *a: sparse_loss(*a, C, R, k), argnums=argnums)(x, W_enc, b_enc, W_dec)
    r = mx.grad(lambda *a: dense_loss(*a, C, R, mask), argnums=argnums)(x, W_enc, b_enc, W_dec)
    for a, b in zip(g, r):
        close(a, b)
    # All-equal rows: still exactly k distinct latents, same values.
    acts, idx = topk_encode(mx.ones((3, d)), mx.ones((m, d)), mx.ones((m,)), k)
    assert all(len(set(row)) == k for row in np.array(idx))
    np.testing.assert_array_equal(np.array(acts), np.full((3, k), d + 1.0, np.float32))


def test_dense_from_topk_places_values():
    rng = np.random.default_rng(3)
    n, m, k = 5, 40, 6
    idx = np.stack([rng.choice(m, size=k, replace=False) for _ in range(n)]).astype(np.int32)
    acts = rng.normal(size=(n, k)).astype(np.float32)
    expected = np.zeros((n, m), np.float32)
    np.put_along_axis(expected, idx, acts, -1)
    out = dense_from_topk(mx.array(acts), mx.array(idx), m)
    assert out.shape == (n, m) and out.dtype == mx.float32
    np.testing.assert_array_equal(np.array(out), expected)


def test_block_size_covers_both_paths():
    assert sparse_ops._block_size(12288, 32) > 1
    assert sparse_ops._block_size(1000, 4) > 1
    assert sparse_ops._block_size(100, 7) == 1
    assert sparse_ops._block_size(1003, 3) == 1
    assert sparse_ops._block_size(96, 90) == 1


def use_streams(monkeypatch, count):
    """Make every kernel and the optimizer use `count` streams (1: the default stream alone),
    whatever the machine's cores or MLXTERP_SAE_STREAMS say."""
    device = mx.default_device()
    chosen = [None] if count == 1 else [mx.new_stream(device) for _ in range(count)]
    monkeypatch.setitem(streams_module._STREAMS, str(device), chosen)


def test_three_streams_match_one_stream(monkeypatch):
    """The row blocks spread over several streams give the result of one stream, with the
    shape large enough that every kernel really splits (top-k, gathers, the sorted scatter)."""
    shape = (1024, 64, 512, 8)
    p = make(*shape)
    assert len(streams_module.row_spans(shape[0], 3, multiple=256)) == 3
    assert shape[0] > sparse_ops._GATHER_CHUNK_FLOATS // (shape[3] * shape[1])  # several gather chunks

    def grads():
        fn = mx.grad(lambda *a: sparse_loss(*a, p["C"], p["R"], 8, b_dec=p["b_dec"]), argnums=(0, 1, 2, 3))
        return [np.array(g) for g in fn(p["x"], p["W_enc"], p["b_enc"], p["W_dec"])]

    use_streams(monkeypatch, 3)
    many = grads()
    use_streams(monkeypatch, 1)
    one = grads()
    for a, b in zip(many, one):
        close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n_streams", [1, 3])
def test_trainer_update_equals_plain_adam_path(monkeypatch, n_streams):
    """SAETrainer's streamed update = remove_parallel_component + clip_grad_norm + Adam + unit_rows."""
    import mlx.optimizers as optim

    from mlxterp.sae.model import SAE
    from mlxterp.sae.ops import remove_parallel_component, unit_rows
    from mlxterp.sae.optim import apply_update

    use_streams(monkeypatch, n_streams)
    schedule = lambda step: 1e-3 * (step.astype(mx.float32) + 1)  # noqa: E731
    sae_a, sae_b = SAE(32, 2048, k=8, seed=4), SAE(32, 2048, k=8, seed=4)
    opt_a = optim.Adam(learning_rate=1.0, bias_correction=True)
    opt_b = optim.Adam(learning_rate=schedule, bias_correction=True)
    opt_a.init(sae_a.trainable_parameters())
    opt_b.init(sae_b.trainable_parameters())
    rng = np.random.default_rng(5)
    grads = {k: mx.array(rng.normal(size=v.shape).astype(np.float32))
             for k, v in SAE(32, 2048, k=8).trainable_parameters().items()}
    for _ in range(2):
        norm_a = apply_update(sae_a, opt_a, dict(grads), schedule(opt_a.step), "W_dec", 0.5)
        g = dict(grads)
        g["W_dec"] = remove_parallel_component(g["W_dec"], sae_b["W_dec"])
        g, norm_b = optim.clip_grad_norm(g, 0.5)
        opt_b.update(sae_b, g)
        sae_b["W_dec"] = unit_rows(sae_b["W_dec"])
        close(norm_a, norm_b, rtol=1e-5)
    for name, value in sae_b.trainable_parameters().items():
        close(sae_a.trainable_parameters()[name], value, rtol=1e-5, atol=1e-6)
    close(opt_a.state["W_dec"]["v"], opt_b.state["W_dec"]["v"], rtol=1e-5, atol=1e-6)
    assert int(opt_a.state["step"]) == int(opt_b.state["step"]) == 2
    close(opt_a.learning_rate, opt_b.learning_rate, rtol=1e-6)
