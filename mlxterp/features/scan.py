"""One pass over a dataset: pack texts into contexts, run the model to the SAE's hook point, encode.

`scan` hands every batch's SAE codes to consumers (top examples, statistics), so that all of
them are computed from a single forward pass over the data. Texts are packed, joined by EOS,
into contexts of `context_tokens`, as the activation store packs them for training; the first
`drop_first` positions of each context (the attention sink), special tokens and tokens above the
SAE's norm limit (`SAE.within_norm_limit`) are excluded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, Sequence

import mlx.core as mx
import numpy as np

from ..data import load_texts
from ..errors import DataError
from ..sae.store import keep_mask, special_token_ids
from .hookpoint import check_features, hook_point

if TYPE_CHECKING:
    from ..model import InterpretableModel
    from ..sae.model import SAE


@dataclass(frozen=True)
class Contexts:
    """Packed token contexts of a dataset.

    tokens (n, length) int32; docs (n, length) int32, the index in `texts` of each token's
    document (-1 on separators and padding); keep (n, length) bool, the positions scanned.
    A token is addressed by its flat index `context * length + position`.
    """

    tokens: np.ndarray
    docs: np.ndarray
    keep: np.ndarray
    texts: list[str]

    @property
    def length(self) -> int:
        return self.tokens.shape[1]

    @property
    def n_tokens(self) -> int:
        """How many positions are scanned."""
        return int(self.keep.sum())


@dataclass(frozen=True)
class CodeBatch:
    """One forward's SAE codes, flattened over (context, position).

    codes (n, n_features) float32, zero at excluded positions; `first` is the flat token index
    of row 0; (row, feature, value) are the nonzero entries of `codes`; `n_scanned` counts the
    rows that are scanned positions.
    """

    codes: np.ndarray
    first: int
    length: int
    row: np.ndarray
    feature: np.ndarray
    value: np.ndarray
    n_scanned: int

    def windows(self, row: np.ndarray, feature: np.ndarray, before: int, after: int) -> np.ndarray:
        """(n, before + 1 + after) codes of `feature` around `row`; NaN outside the context."""
        offsets = np.arange(-before, after + 1)
        rows = row[:, None] + offsets
        inside = (rows // self.length == row[:, None] // self.length) & (rows >= 0) & (
            rows < len(self.codes)
        )
        values = self.codes[np.where(inside, rows, 0), feature[:, None]]
        return np.where(inside, values, np.nan).astype(np.float32)


class Consumer(Protocol):
    def update(self, batch: CodeBatch) -> None: ...


def pack_documents(
    model: "InterpretableModel",
    texts: Sequence[str],
    context_tokens: int,
    drop_first: int,
    n_tokens: int | None,
) -> Contexts:
    """Tokenize `texts` and pack them, joined by EOS, into contexts; at most `n_tokens` scanned.

    The last context is padded with EOS (never scanned), so short datasets lose no text.
    """
    if context_tokens <= drop_first:
        raise DataError(
            f"context_tokens ({context_tokens}) must exceed drop_first ({drop_first}): "
            "raise context_tokens"
        )
    eos = model.pad_token_id
    special = special_token_ids(model.tokenizer)
    budget = None if n_tokens is None else n_tokens * context_tokens // (context_tokens - drop_first) + context_tokens
    stream: list[int] = []
    docs: list[int] = []
    for index, text in enumerate(texts):
        ids = model.encode(text)
        stream.extend(ids + [eos])
        docs.extend([index] * len(ids) + [-1])
        if budget is not None and len(stream) >= budget:
            break
    n = -(-len(stream) // context_tokens)
    pad = n * context_tokens - len(stream)
    tokens = np.asarray(stream + [eos] * pad, dtype=np.int32).reshape(n, context_tokens)
    doc_ids = np.asarray(docs + [-1] * pad, dtype=np.int32).reshape(n, context_tokens)
    keep = keep_mask(tokens, drop_first, special) & (doc_ids >= 0)
    if n_tokens is not None:
        keep &= np.cumsum(keep.ravel()).reshape(keep.shape) <= n_tokens
        used = keep.any(axis=1).nonzero()[0]
        last = used[-1] + 1 if used.size else 0
        tokens, doc_ids, keep = tokens[:last], doc_ids[:last], keep[:last]
    if not keep.any():
        raise DataError(
            f"the dataset has no token to scan: every token is special or among the first "
            f"{drop_first} of its context. Pass more (or longer) texts, or lower drop_first"
        )
    return Contexts(tokens, doc_ids, keep, list(texts))


def scan(
    sae: "SAE",
    model: "InterpretableModel",
    dataset: Any,
    consumers: Sequence[Consumer],
    feature_indices: Sequence[int] | None = None,
    n_tokens: int | None = 100_000,
    context_tokens: int = 256,
    batch_size: int = 8,
    drop_first: int = 1,
    progress: bool = False,
) -> Contexts:
    """Run the model over `dataset` once, handing each batch's codes to every consumer.

    Args:
        dataset: anything `mlxterp.data.load_texts` reads (None: the bundled corpus).
        feature_indices: the features consumers see (codes columns, in this order); None: all.
        n_tokens: scan at most this many positions (None: the whole dataset).
        context_tokens: tokens per packed context; batch_size: contexts per forward.
        drop_first: positions excluded at the start of every context (the attention sink).

    Returns:
        The packed contexts (to turn token indices back into text).
    """
    path = hook_point(sae, model)
    columns = None if feature_indices is None else check_features(sae, feature_indices)
    contexts = pack_documents(model, load_texts(dataset), context_tokens, drop_first, n_tokens)
    starts = range(0, len(contexts.tokens), batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="scanning", unit="batch")
    for start in starts:
        batch = _encode_batch(sae, model, path, contexts, start, batch_size, columns)
        for consumer in consumers:
            consumer.update(batch)
    return contexts


def _encode_batch(sae, model, path, contexts: Contexts, start: int, size: int, columns) -> CodeBatch:
    tokens = contexts.tokens[start : start + size]
    keep = contexts.keep[start : start + size].ravel()
    with model.trace(mx.array(tokens), default_capture=False):
        saved = model.module(path).output.save()
    acts = saved.value.reshape(-1, saved.value.shape[-1])
    keep = keep & np.array(sae.within_norm_limit(acts))
    row, feature, value = _nonzero_codes(sae, acts)
    chosen = keep[row] & (value != 0)
    n_features = sae.d_hidden
    if columns is not None:
        lookup = np.full(sae.d_hidden, -1, dtype=np.int64)
        lookup[columns] = np.arange(len(columns))
        feature = lookup[feature]
        chosen &= feature >= 0
        n_features = len(columns)
    row, feature, value = row[chosen], feature[chosen], value[chosen]
    codes = np.zeros((len(keep), n_features), dtype=np.float32)
    codes[row, feature] = value
    return CodeBatch(
        codes=codes,
        first=start * contexts.length,
        length=contexts.length,
        row=row,
        feature=feature,
        value=value,
        n_scanned=int(keep.sum()),
    )


def _nonzero_codes(sae: "SAE", acts: mx.array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, feature, value) of the nonzero codes of `acts` (n, d_model), in float32.

    A TopK SAE hands over its k (index, value) pairs per token directly, which is much cheaper
    than searching the dense (n, d_hidden) codes for nonzeros.
    """
    acts = acts.astype(mx.float32)
    if getattr(sae, "architecture", None) == "topk":
        values, indices = sae.encode_sparse(acts)
        values, indices = np.array(values, dtype=np.float32), np.array(indices, dtype=np.int64)
        row = np.repeat(np.arange(len(values)), values.shape[1])
        return row, indices.ravel(), values.ravel()
    codes = np.array(sae.encode(acts), dtype=np.float32)
    row, feature = np.nonzero(codes)
    return row, feature.astype(np.int64), codes[row, feature]
