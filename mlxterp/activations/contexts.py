"""Texts -> fixed-length token contexts: the one packer, and which positions count as training tokens.

Documents are tokenized and joined by EOS into contexts of `context_length`; the last context is
padded (padding never counts). In every context the first `drop_first_tokens` positions (the
attention sink: on SmolLM2 its residual norm is ~100x the others) and, with
`drop_special_tokens`, every special token are left out of training, metrics and scans.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import DataError


@dataclass(frozen=True)
class ContextSettings:
    """How texts become contexts; shared by the activation store, scans, statistics, examples,
    the dashboard and evaluation, and stored in an SAE's metadata."""

    context_length: int = 256
    drop_first_tokens: int = 1
    drop_special_tokens: bool = True

    def __post_init__(self) -> None:
        for name in ("context_length", "drop_first_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise DataError(f"{name} must be a non-negative integer, got {value!r}")
        if self.context_length < 1:
            raise DataError(f"context_length must be a positive integer, got {self.context_length}")
        if self.drop_first_tokens >= self.context_length:
            raise DataError(f"drop_first_tokens={self.drop_first_tokens} would drop every token of a "
                            f"context of context_length={self.context_length}: lower it")
        if not isinstance(self.drop_special_tokens, bool):
            raise DataError(f"drop_special_tokens must be True or False, got {self.drop_special_tokens!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> "ContextSettings":
        """The settings an SAE was trained with (defaults for keys its metadata lacks)."""
        defaults = cls()
        return cls(
            context_length=int(metadata.get("context_length") or defaults.context_length),
            drop_first_tokens=int(metadata.get("drop_first_tokens", defaults.drop_first_tokens)),
            drop_special_tokens=bool(metadata.get("drop_special_tokens", defaults.drop_special_tokens)),
        )


@dataclass(frozen=True)
class Contexts:
    """Packed token contexts of a dataset.

    tokens (n, length) int32; docs (n, length) int32, the index in `texts` of each token's
    document (-1 on separators and padding); keep (n, length) bool, the positions that count.
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
        """How many positions count."""
        return int(self.keep.sum())

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def first_tokens(self, n_tokens: int | None) -> "Contexts":
        """The contexts up to the one holding the `n_tokens`-th position that counts, with no
        position after that one counting (None: all of them)."""
        if n_tokens is None:
            return self
        keep = self.keep & (np.cumsum(self.keep.ravel()).reshape(self.keep.shape) <= n_tokens)
        used = keep.any(axis=1).nonzero()[0]
        last = used[-1] + 1 if used.size else 0
        return Contexts(self.tokens[:last], self.docs[:last], keep[:last], self.texts)


def special_token_ids(tokenizer) -> set[int]:
    """Ids of BOS/EOS/pad and every other special token the tokenizer declares."""
    ids = set(getattr(tokenizer, "all_special_ids", None) or [])
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(tokenizer, attr, None)
        if isinstance(value, int):
            ids.add(value)
    ids |= set(getattr(tokenizer, "eos_token_ids", None) or [])
    return ids


def keep_mask(tokens: np.ndarray, drop_first_tokens: int, special_ids: set[int]) -> np.ndarray:
    """(n, seq) bool: True where a position is not among the first `drop_first_tokens` of its
    context and not one of `special_ids`."""
    keep = np.ones(tokens.shape, dtype=bool)
    keep[:, :drop_first_tokens] = False
    if special_ids:
        keep &= ~np.isin(tokens, np.fromiter(special_ids, dtype=np.int64))
    return keep


def pack_texts(model, texts: Sequence[str], settings: ContextSettings, n_tokens: int | None = None) -> Contexts:
    """Tokenize `texts` with `model` and pack them, joined by EOS, into contexts.

    With `n_tokens`, tokenizing stops once that many positions count, and only they are kept.
    """
    length, drop_first = settings.context_length, settings.drop_first_tokens
    eos = model.pad_token_id
    budget = None if n_tokens is None else n_tokens * length // (length - drop_first) + length
    # Each document's ids as an int32 array (not one list of Python ints: 4 bytes a token, not ~40).
    streams: list[np.ndarray] = []
    docs: list[np.ndarray] = []
    total = 0
    for index, text in enumerate(texts):
        ids = model.encode(text)
        if not ids:
            continue
        streams.append(np.asarray(ids + [eos], dtype=np.int32))
        docs.append(np.full(len(ids) + 1, index, dtype=np.int32))
        docs[-1][-1] = -1
        total += len(ids) + 1
        if budget is not None and total >= budget:
            break
    n = -(-total // length)
    pad = n * length - total
    tokens = np.concatenate([*streams, np.full(pad, eos, dtype=np.int32)]).reshape(n, length)
    doc_ids = np.concatenate([*docs, np.full(pad, -1, dtype=np.int32)]).reshape(n, length)
    del streams, docs
    special = special_token_ids(model.tokenizer) if settings.drop_special_tokens else set()
    keep = keep_mask(tokens, drop_first, special)
    keep.reshape(-1)[total:] = False
    packed = Contexts(tokens, doc_ids, keep, list(texts)).first_tokens(n_tokens)
    if not packed.keep.any():
        raise DataError(
            f"the dataset has no usable token ({total} tokens in all): every token is special, "
            f"padding, or among the first {drop_first} of its context. Pass more (or longer) texts, "
            "or lower drop_first_tokens"
        )
    return packed
