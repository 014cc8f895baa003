"""One pass over a dataset: pack texts into contexts, run the model to the SAE's hook point, encode.

`scan` hands every batch's SAE codes to consumers (top examples, statistics), so that all of
them are computed from a single forward pass over the data. Texts are packed as the activation
store packs them for training (`pack_texts`, with the SAE's own context settings unless others
are given); positions that do not count and tokens above the SAE's norm limit
(`SAE.within_norm_limit`) are excluded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, Sequence

import mlx.core as mx
import numpy as np

from ..activations import ContextSettings, Contexts, pack_texts
from ..data import load_texts
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
    """Run the model over `dataset` once, handing each batch's codes to every consumer.

    Args:
        dataset: anything `mlxterp.data.load_texts` reads (None: the bundled corpus).
        feature_indices: the features consumers see (codes columns, in this order); None: all.
        n_tokens: scan at most this many positions (None: the whole dataset).
        contexts: how texts become contexts (None: as the SAE was trained, from its metadata).
        contexts_per_forward: contexts per forward pass.

    Returns:
        The packed contexts (to turn token indices back into text).
    """
    point = sae_hook_point(sae, model)
    columns = None if feature_indices is None else check_features(sae, feature_indices)
    settings = contexts or ContextSettings.from_metadata(sae.metadata)
    packed = pack_texts(model, load_texts(dataset), settings, n_tokens)
    starts = range(0, len(packed), contexts_per_forward)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="scanning", unit="batch")
    for start in starts:
        batch = _encode_batch(sae, model, point, packed, start, contexts_per_forward, columns)
        for consumer in consumers:
            consumer.update(batch)
    return packed


def _encode_batch(sae, model, point, contexts: Contexts, start: int, size: int, columns) -> CodeBatch:
    tokens = contexts.tokens[start : start + size]
    keep = contexts.keep[start : start + size].ravel()
    with model.trace(mx.array(tokens), default_capture=False):
        saved = getattr(model.module(point.path), point.port).save()
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
