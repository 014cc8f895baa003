"""Sparse TopK SAE kernels: top-k encoder and gather decoder with sparse gradients.

The row-wise kernels below (top-k selection, gathers, the sorted scatter) split their rows over
`streams.streams()`: one stream per core on the CPU, the default stream elsewhere.
"""

from __future__ import annotations

import math

import mlx.core as mx

from .streams import on, row_spans, streams

_GATHER_CHUNK_FLOATS = 1 << 18


def topk_encode(
    x: mx.array, W_enc: mx.array, b_enc: mx.array, k: int, b_dec: mx.array | None = None
) -> tuple[mx.array, mx.array]:
    """The k largest of relu((x - b_dec) @ W_enc.T + b_enc) per row (b_dec None: of x itself).

    x (n, d_model), W_enc (d_hidden, d_model), b_enc (d_hidden,), b_dec (d_model,) -> top_acts
    (n, k) float, top_indices (n, k) int32 (distinct per row, unsorted). Only the selected latents
    carry gradient, so the backward pass costs O(n k d_model) instead of a dense matmul. With
    b_dec passed here (rather than subtracted by the caller) its gradient is one (d_hidden,) @
    (d_hidden, d_model) product, and the gradient w.r.t. x, a gather of n*k encoder rows, is
    only computed when something asks for it (training never does).
    """
    if b_dec is None:
        return _topk_encode(k)(x, W_enc, b_enc)
    return _topk_encode_centred(k)(x, b_dec, W_enc, b_enc)


def sparse_decode(top_acts: mx.array, top_indices: mx.array, W_dec: mx.array) -> mx.array:
    """sum_j top_acts[:, j] * W_dec[top_indices[:, j]] -> (n, d_model), without a dense code matrix.

    top_acts (n, k), top_indices (n, k) int, W_dec (d_hidden, d_model).
    """
    return _sparse_decode(top_acts, top_indices, W_dec)


def dense_from_topk(top_acts: mx.array, top_indices: mx.array, d_hidden: int) -> mx.array:
    """Dense codes (n, d_hidden) with top_acts at top_indices and zeros elsewhere."""
    zeros = mx.zeros((top_acts.shape[0], d_hidden), dtype=top_acts.dtype)
    return mx.put_along_axis(zeros, top_indices, top_acts, axis=-1)


def _row_topk(pre: mx.array, k: int) -> tuple[mx.array, mx.array]:
    """Exact top-k values and indices per row of pre (n, m), unsorted; rows split over the streams."""
    spans = row_spans(pre.shape[0], len(streams()), multiple=64)
    if len(spans) == 1:
        return _row_topk_block(pre, k)
    parts = []
    for stream, (a, b) in zip(streams(), spans):
        with on(stream):
            parts.append(_row_topk_block(pre[a:b], k))
    return mx.concatenate([v for v, _ in parts]), mx.concatenate([i for _, i in parts])


def _row_topk_block(pre: mx.array, k: int) -> tuple[mx.array, mx.array]:
    """Exact top-k values and indices per row of pre (n, m), unsorted.

    The k largest entries lie in the k blocks with the largest maxima, so we partition the
    block maxima and then only the k * block candidates, instead of all m entries per row.
    Blocks are strided (entry t * n_blocks + b belongs to block b) because a max over a
    non-trailing axis runs ~3x faster than over short trailing blocks on CPU.
    """
    n, m = pre.shape
    block = _block_size(m, k)
    if block == 1:
        idx = mx.argpartition(pre, m - k, axis=-1)[:, m - k :]
        return mx.take_along_axis(pre, idx, axis=-1), idx
    n_blocks = m // block
    blocks = pre.reshape(n, block, n_blocks)
    top_blocks = mx.argpartition(blocks.max(axis=1), n_blocks - k, axis=-1)[:, n_blocks - k :]
    cand = mx.take_along_axis(blocks, top_blocks[:, None, :], axis=2).reshape(n, block * k)
    j = mx.argpartition(cand, block * k - k, axis=-1)[:, block * k - k :]
    idx = (j // k) * n_blocks + mx.take_along_axis(top_blocks, j % k, axis=-1)
    return mx.take_along_axis(cand, j, axis=-1), idx


def _block_size(m: int, k: int) -> int:
    """Largest power of two <= sqrt(m / k) that divides m, or 1 when blocking does not pay."""
    block = 1 << int(math.log2(max(1.0, math.sqrt(m / k))))
    while block > 1 and m % block:
        block //= 2
    return block if block >= 4 else 1


def _gather_rows_matmul(lhs: mx.array, indices: mx.array, table: mx.array, rhs: mx.array | None) -> mx.array:
    """Chunked gather-and-multiply over rows of table, keeping each gather cache-sized.

    With rhs None: out[i] = lhs[i] @ table[indices[i]] -> (n, d)  (lhs (n, k)).
    With rhs (n, d): out[i] = table[indices[i]] @ rhs[i] -> (n, k).
    Consecutive chunks go to the streams in turn.
    """
    n, k = indices.shape
    chunk = max(1, _GATHER_CHUNK_FLOATS // (k * table.shape[1]))
    spread = streams()

    def one(s):
        rows = table[indices[s : s + chunk]]
        if rhs is None:
            return (lhs[s : s + chunk, None, :] @ rows).squeeze(1)
        return (rows @ rhs[s : s + chunk, :, None]).squeeze(2)

    outs = []
    for i, start in enumerate(range(0, n, chunk)):
        with on(spread[i % len(spread)]):
            outs.append(one(start))
    return mx.concatenate(outs, axis=0) if len(outs) > 1 else outs[0]


def _scatter_rows(indices: mx.array, weights: mx.array, src: mx.array, num_rows: int) -> mx.array:
    """out[l] = sum over (i, j) with indices[i, j] == l of weights[i, j] * src[i] -> (num_rows, d).

    Sorting the (i, j) pairs by latent turns the scatter-add into one segmented matmul
    (one gemv per latent), which is ~10x faster on CPU than a scatter-add of n*k rows. Row
    blocks go to the streams and their partial sums are added.
    """
    parts = []
    for stream, (a, b) in zip(streams(), row_spans(indices.shape[0], len(streams()), multiple=256)):
        with on(stream):
            parts.append(_scatter_rows_block(indices[a:b], weights[a:b], src[a:b], num_rows))
    out = parts[0]
    for part in parts[1:]:
        out = out + part
    return out


def _scatter_rows_block(indices: mx.array, weights: mx.array, src: mx.array, num_rows: int) -> mx.array:
    n, k = indices.shape
    flat = indices.reshape(-1)
    order = mx.argsort(flat)
    counts = mx.zeros((num_rows,), dtype=mx.int32).at[flat].add(1)
    ends = mx.cumsum(counts)
    segments = mx.stack([ends - counts, ends], axis=1)
    a = weights.reshape(-1)[order][None]
    b = src[order // k]
    return mx.segmented_mm(a, b, segments).reshape(num_rows, src.shape[1])


@mx.custom_function
def _sparse_decode(top_acts, top_indices, W_dec):
    return _gather_rows_matmul(top_acts, top_indices, W_dec, None)


@_sparse_decode.vjp
def _sparse_decode_vjp(primals, cotangent, output):
    top_acts, top_indices, W_dec = primals
    d_acts = _gather_rows_matmul(None, top_indices, W_dec, cotangent)
    d_W = _scatter_rows(top_indices, top_acts, cotangent, W_dec.shape[0])
    return d_acts, mx.zeros_like(top_indices), d_W


_ENCODERS: dict[tuple[int, bool], object] = {}


def _encode_forward(x, W_enc, b_enc, k):
    pre = mx.addmm(b_enc, x, W_enc.T)
    vals, idx = _row_topk(pre, k)
    return mx.maximum(vals, 0), idx.astype(mx.int32)


def _encode_backward(x, W_enc, b_enc, cotangent, acts, idx):
    """Gradients of the encoder (x already centred) given d top_acts: (d_x, d_W, d_b), d_x lazy."""
    g = cotangent * (acts > 0)
    d_b = mx.zeros_like(b_enc).at[idx.reshape(-1)].add(g.reshape(-1))
    d_W = _scatter_rows(idx, g, x, W_enc.shape[0])
    d_x = _gather_rows_matmul(g, idx, W_enc, None)
    return d_x, d_W, d_b


def _topk_encode(k: int):
    """The custom-gradient encoder of x for a given k (k must be static for mx.compile)."""
    if (k, False) in _ENCODERS:
        return _ENCODERS[k, False]

    @mx.custom_function
    def encode(x, W_enc, b_enc):
        return _encode_forward(x, W_enc, b_enc, k)

    @encode.vjp
    def encode_vjp(primals, cotangents, outputs):
        x, W_enc, b_enc = primals
        return _encode_backward(x, W_enc, b_enc, cotangents[0], *outputs)

    _ENCODERS[k, False] = encode
    return encode


def _topk_encode_centred(k: int):
    """The custom-gradient encoder of x - b_dec for a given k.

    d b_dec = -sum_i d_centred[i] = -sum_(i,j) g_ij W_enc[idx_ij] = -(d b_enc) @ W_enc, so the
    (n, d) gradient w.r.t. the centred input is needed only for x, and stays unevaluated when
    nothing uses it.
    """
    if (k, True) in _ENCODERS:
        return _ENCODERS[k, True]

    @mx.custom_function
    def encode(x, b_dec, W_enc, b_enc):
        return _encode_forward(x - b_dec, W_enc, b_enc, k)

    @encode.vjp
    def encode_vjp(primals, cotangents, outputs):
        x, b_dec, W_enc, b_enc = primals
        d_x, d_W, d_b = _encode_backward(x - b_dec, W_enc, b_enc, cotangents[0], *outputs)
        d_b_dec = -(d_b @ W_enc)
        return d_x, d_b_dec, d_W, d_b

    _ENCODERS[k, True] = encode
    return encode
