"""One pass over a dataset: pack texts into contexts, run the model to the SAE's hook point (or read
those activations from an activation store's cache), encode.

`scan` hands every batch's SAE codes to consumers (top examples, statistics), so that all of
them are computed from a single forward pass over the data. Texts are packed as the activation
store packs them for training (`pack_texts`, with the SAE's own context settings unless others
are given); positions that do not count and tokens above the SAE's norm limit
(`SAE.within_norm_limit`) are excluded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Protocol, Sequence

import mlx.core as mx
import numpy as np

from ..activations import ActivationStore, ContextSettings, Contexts, pack_texts
from ..data import load_texts
from ..errors import DataError
from ..fast_forward import numpy_exp_forward
from ..sae.checks import check_features, sae_hook_point

if TYPE_CHECKING:
    from ..model import InterpretableModel
    from ..sae.model import SAE


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


def scan(
    sae: "SAE",
    model: "InterpretableModel",
    dataset: Any,
    consumers: Sequence[Consumer],
    feature_indices: Sequence[int] | None = None,
    n_tokens: int | None = 100_000,
    contexts: ContextSettings | None = None,
    contexts_per_forward: int = 8,
    progress: bool = False,
) -> Contexts:
    """Encode the SAE's hook point over `dataset` once, handing each batch's codes to every consumer.

    Args:
        dataset: anything `mlxterp.data.load_texts` reads (None: the bundled corpus), or an
            `ActivationStore` at the SAE's hook point: its cached activations (the training
            cache) are encoded instead of running the model, in the order they were captured;
            with no complete cache the model runs over the store's contexts. Or packed `Contexts`
            (e.g. those a scan returned), scanned as they are.
        feature_indices: the features consumers see (codes columns, in this order); None: all.
        n_tokens: scan at most this many positions (None: the whole dataset).
        contexts: how texts become contexts (None: as the SAE was trained, from its metadata).
        contexts_per_forward: contexts per forward pass (or per batch read from the cache).

    Returns:
        The scanned contexts, in scan order (to turn token indices back into text).
    """
    point = sae_hook_point(sae, model)
    columns = None if feature_indices is None else check_features(sae, feature_indices)
    settings = contexts or ContextSettings.from_metadata(sae.metadata)
    if isinstance(dataset, ActivationStore):
        _check_store(dataset, model, point, settings)
        cached = dataset.cached_rows()
        total = dataset.n_tokens if n_tokens is None else min(n_tokens, dataset.n_tokens)
        rows = (_CachedRows(dataset.packed, cached, total, contexts_per_forward) if cached is not None
                else _ModelRows(model, point, dataset.packed.first_tokens(total), contexts_per_forward))
    elif isinstance(dataset, Contexts):
        if dataset.length != settings.context_length:
            raise DataError(f"the contexts passed hold {dataset.length} tokens each, but the scan's context "
                            f"settings say {settings.context_length}: pack them with the SAE's settings")
        rows = _ModelRows(model, point, dataset.first_tokens(n_tokens), contexts_per_forward)
    else:
        rows = _ModelRows(model, point, pack_texts(model, load_texts(dataset), settings, n_tokens),
                          contexts_per_forward)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=rows.total, desc="scanning", unit="tok")
    for first, acts, keep in rows:
        batch = _encode_batch(sae, acts, keep, first, settings.context_length, columns)
        for consumer in consumers:
            consumer.update(batch)
        if bar is not None:
            bar.update(int(keep.sum()))
    if bar is not None:
        bar.close()
    return rows.contexts()


def _check_store(store: ActivationStore, model, point, settings: ContextSettings) -> None:
    """Refuse a store whose activations are not the SAE's input on this model as it reads them."""
    if store.hooks != (point,) or store.model.fingerprint != model.fingerprint or store.settings != settings:
        raise DataError(
            f"this activation store holds {', '.join(h.path for h in store.hooks)} of {store.model.name} "
            f"({store.settings}), but the SAE reads {point.path} of {model.name} ({settings}): scan texts "
            "instead, or a store built with the SAE's model, hook point and context settings"
        )


class _ModelRows:
    """Rows of the hook point from the model, one forward per `size` contexts of `packed`."""

    def __init__(self, model, point, packed: Contexts, size: int):
        self.model, self.point, self.packed, self.size = model, point, packed, size
        self.total = packed.n_tokens

    def __iter__(self) -> Iterator[tuple[int, mx.array, np.ndarray]]:
        """(index of the first context, activations (n, d), keep (n,)) per forward."""
        for start in range(0, len(self.packed), self.size):
            part = slice(start, start + self.size)
            with numpy_exp_forward(self.model.model), self.model.trace(mx.array(self.packed.tokens[part]),
                                                                       default_capture=False):
                saved = getattr(self.model.module(self.point.path), self.point.port).save()
            yield start, saved.value.reshape(-1, saved.value.shape[-1]), self.packed.keep[part].ravel()

    def contexts(self) -> Contexts:
        return self.packed


class _CachedRows:
    """Rows of a store's cache, `size` whole contexts at a time, in cache order; the contexts
    are renumbered in the order they come (`contexts()`), keeping only the positions read."""

    def __init__(self, packed: Contexts, cached, total: int, size: int):
        self.packed, self.cached, self.size, self.total = packed, cached, size, total
        self.order: list[int] = []  # packed index of each scanned context
        self.seen: set[int] = set()
        self.keep = np.zeros(packed.keep.shape, dtype=bool)  # the positions read, by packed index

    def __iter__(self) -> Iterator[tuple[int, mx.array, np.ndarray]]:
        """(index of the first context, activations (n, d), keep (n,)) per `size` contexts."""
        pending: list[tuple[np.ndarray, np.ndarray]] = []  # (rows, positions) of one context each
        for acts, where in self._head():
            cuts = np.flatnonzero(where[1:, 0] != where[:-1, 0]) + 1
            for part, at in zip(np.split(acts, cuts), np.split(where, cuts)):
                if pending and pending[-1][1][0, 0] == at[0, 0]:  # a context split across shards
                    pending[-1] = (np.concatenate([pending[-1][0], part]), np.concatenate([pending[-1][1], at]))
                else:
                    pending.append((part, at))
            while len(pending) > self.size:  # the last one may continue in the next shard
                yield self._batch(pending[: self.size])
                pending = pending[self.size :]
        if pending:
            yield self._batch(pending)

    def _head(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The cache's first `total` rows, reading no shard beyond them."""
        have = 0
        for acts, where in self.cached:
            if have >= self.total:
                return
            yield acts[: self.total - have], where[: self.total - have]
            have += len(acts)

    def _batch(self, runs: list[tuple[np.ndarray, np.ndarray]]) -> tuple[int, mx.array, np.ndarray]:
        first, length = len(self.order), self.packed.length
        dense = np.zeros((len(runs) * length, runs[0][0].shape[1]), dtype=np.float32)
        keep = np.zeros(len(runs) * length, dtype=bool)
        for i, (acts, where) in enumerate(runs):
            context = int(where[0, 0])
            if context in self.seen:
                raise DataError(f"the activation cache's rows of context {context} are not contiguous: the "
                                "cache is damaged; delete its folder to capture it afresh")
            self.seen.add(context)
            self.order.append(context)
            dense[i * length + where[:, 1]] = acts
            keep[i * length + where[:, 1]] = True
            self.keep[context, where[:, 1]] = True
        return first, mx.array(dense), keep

    def contexts(self) -> Contexts:
        ids = np.asarray(self.order, dtype=np.int64)
        return Contexts(self.packed.tokens[ids], self.packed.docs[ids], self.keep[ids], self.packed.texts)


def _encode_batch(sae, acts: mx.array, keep: np.ndarray, first_context: int, length: int, columns) -> CodeBatch:
    """A CodeBatch of `acts` (n, d), the rows of whole contexts from `first_context` on."""
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
        first=first_context * length,
        length=length,
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
