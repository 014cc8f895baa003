"""Activation store: stream one hook point's activations over a text dataset, shuffled and cached.

Texts are tokenized and packed into fixed-length contexts (documents joined by EOS). Each
context's first `drop_first_tokens` positions (the attention sink: on SmolLM2 its residual norm
is ~100x the others) and every special or padding token are dropped, so that neither training
nor any metric describes an outlier token. With `max_token_norm` set (`norm_limit`), tokens whose
activation norm exceeds it are dropped too: SmolLM2 puts a second sink at position 1 of ~10% of
contexts. Tokens from many documents are mixed in a shuffle buffer; memory stays bounded by the
buffer, whatever the dataset size. With `cache_dir`, the first pass writes safetensors shards
and later epochs (or another SAE on the same hook point) read them instead of running the model.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import mlx.core as mx
import numpy as np
from safetensors.numpy import load_file, save_file
from tqdm.auto import tqdm

from ..errors import DataError
from ..io_utils import atomic_path, atomic_write_text

if TYPE_CHECKING:
    from ..model import InterpretableModel

CACHE_FORMAT = "mlxterp.activation_cache"
CACHE_VERSION = 1


@dataclass(frozen=True)
class StoreSettings:
    """How texts become training tokens; part of the cache key."""

    layer: int
    component: str
    context_length: int = 256
    drop_first_tokens: int = 1
    drop_special_tokens: bool = True
    contexts_per_forward: int = 8
    seed: int = 0


def special_token_ids(tokenizer) -> set[int]:
    """Ids of BOS/EOS/pad and every other special token the tokenizer declares."""
    ids = set(getattr(tokenizer, "all_special_ids", None) or [])
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(tokenizer, attr, None)
        if isinstance(value, int):
            ids.add(value)
    ids |= set(getattr(tokenizer, "eos_token_ids", None) or [])
    return ids


def pack_contexts(model: "InterpretableModel", texts: Sequence[str], context_length: int) -> np.ndarray:
    """Tokenize `texts` and pack them, joined by EOS, into (n_contexts, context_length) int32."""
    eos = model.pad_token_id
    stream: list[int] = []
    for text in texts:
        ids = model.encode(text)
        if ids:
            stream.extend(ids)
            stream.append(eos)
    n = len(stream) // context_length
    if n == 0:
        raise DataError(
            f"the dataset holds {len(stream)} tokens, fewer than one context of {context_length}: "
            "add text or lower context_length"
        )
    return np.asarray(stream[: n * context_length], dtype=np.int32).reshape(n, context_length)


def keep_mask(tokens: np.ndarray, drop_first_tokens: int, special_ids: set[int]) -> np.ndarray:
    """(n, seq) bool: True where a position is a real token that training and metrics use."""
    keep = np.ones(tokens.shape, dtype=bool)
    keep[:, :drop_first_tokens] = False
    if special_ids:
        keep &= ~np.isin(tokens, np.fromiter(special_ids, dtype=np.int64))
    return keep


def norm_limit(sample, max_norm_ratio: float | None) -> float | None:
    """`max_norm_ratio` times the median token norm of `sample` (..., d_model); None for None.

    Tokens above it are outliers (attention sinks past the first position, at ~100x the median
    norm) that would otherwise hold most of the variance of any batch they are in.
    """
    if max_norm_ratio is None:
        return None
    sample = np.asarray(sample, dtype=np.float32)
    norms = np.linalg.norm(sample.reshape(-1, sample.shape[-1]), axis=-1)
    if norms.size == 0:
        raise DataError("cannot set a norm limit from an empty sample: pass some activations")
    return float(max_norm_ratio * np.median(norms))


def within_limit(acts, max_token_norm: float | None) -> mx.array:
    """(...,) bool: True where a token of `acts` (..., d_model) has norm at most `max_token_norm`
    (every token when it is None)."""
    acts = mx.array(acts)
    if max_token_norm is None:
        return mx.ones(acts.shape[:-1], dtype=mx.bool_)
    return mx.linalg.norm(acts.astype(mx.float32), axis=-1) <= max_token_norm


class ActivationStore:
    """Activations (n_tokens, d_model) of one hook point over a dataset, served in batches.

    `batches(batch_size)` yields shuffled float32 mx.arrays for one epoch; it runs the model
    on the first epoch (writing the cache when `cache_dir` is set) and reads the cache after.
    The cache holds every kept token; `max_token_norm` (None: no limit) filters what is served,
    so changing it never invalidates the cache.
    """

    def __init__(
        self,
        model: "InterpretableModel",
        texts: Sequence[str],
        settings: StoreSettings,
        cache_dir: str | os.PathLike | None = None,
        max_tokens: int | None = None,
        shuffle_buffer_tokens: int = 1 << 16,
        progress: bool = True,
        name: str = "train",
        max_token_norm: float | None = None,
    ):
        if not texts:
            raise DataError("the dataset is empty: pass at least one non-empty text")
        model.anatomy.check_layer(settings.layer)
        self.model = model
        self.settings = settings
        self.path = model.activation_path(settings.layer, settings.component)
        self.contexts = pack_contexts(model, texts, settings.context_length)
        self.keep = keep_mask(self.contexts, settings.drop_first_tokens, special_token_ids(model.tokenizer))
        self.max_tokens = max_tokens
        self.n_tokens = int(self.keep.sum()) if max_tokens is None else min(int(self.keep.sum()), max_tokens)
        if self.n_tokens == 0:
            raise DataError(
                "no usable tokens: every token is special, padding, or among the first "
                f"{settings.drop_first_tokens} of its context. Pass real text."
            )
        self.shuffle_buffer_tokens = shuffle_buffer_tokens
        self.progress = progress
        self.name = name
        self.max_token_norm = max_token_norm
        self.cache_dir = Path(cache_dir) / self._cache_key(texts) if cache_dir else None
        self._epoch = 0

    @property
    def d_model(self) -> int:
        return self.model.d_model

    def _cache_key(self, texts: Sequence[str]) -> str:
        digest = hashlib.sha256()
        for text in texts:
            digest.update(text.encode("utf-8", "replace"))
            digest.update(b"\0")
        meta = json.dumps(
            {"model": self.model.name, "path": self.path, "settings": asdict(self.settings),
             "max_tokens": self.max_tokens, "name": self.name}, sort_keys=True
        )
        digest.update(meta.encode())
        return f"{self.name}-{digest.hexdigest()[:16]}"

    # -- producing activations ------------------------------------------------------------
    def _model_chunks(self, order: np.ndarray) -> Iterator[np.ndarray]:
        """(n_kept, d_model) float32 activations of contexts in `order`, a forward at a time."""
        step = self.settings.contexts_per_forward
        produced = 0
        bar = tqdm(total=self.n_tokens, desc=f"activations ({self.name})", unit="tok",
                   disable=not self.progress, leave=False)
        for start in range(0, len(order), step):
            rows = order[start : start + step]
            tokens = mx.array(self.contexts[rows])
            with self.model.trace(tokens, default_capture=False):
                saved = self.model.module(self.path).output.save()
            acts = np.asarray(saved.value.astype(mx.float32))
            chunk = acts[self.keep[rows]]
            if not np.isfinite(chunk).all():
                raise DataError(
                    f"the model produced NaN/inf activations at {self.path}: check the model's "
                    "weights and dtype (compute in float32 on CPU)"
                )
            if self.max_tokens is not None:
                chunk = chunk[: self.max_tokens - produced]
            produced += len(chunk)
            bar.update(len(chunk))
            yield chunk
            if produced >= self.n_tokens:
                break
        bar.close()

    def _cached_chunks(self, rng: random.Random) -> Iterator[np.ndarray]:
        manifest = json.loads((self.cache_dir / "manifest.json").read_text())
        shards = list(manifest["shards"])
        rng.shuffle(shards)
        for shard in shards:
            yield load_file(str(self.cache_dir / shard))["activations"]

    def _cache_complete(self) -> bool:
        if self.cache_dir is None or not (self.cache_dir / "manifest.json").exists():
            return False
        manifest = json.loads((self.cache_dir / "manifest.json").read_text())
        return manifest.get("format") == CACHE_FORMAT and manifest.get("n_tokens") == self.n_tokens

    def _chunks_writing_cache(self, order: np.ndarray) -> Iterator[np.ndarray]:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        shards = []
        for i, chunk in enumerate(_regroup(self._model_chunks(order), self.shuffle_buffer_tokens // 4)):
            name = f"shard-{i:05d}.safetensors"
            with atomic_path(self.cache_dir / name) as tmp:
                save_file({"activations": np.ascontiguousarray(chunk)}, str(tmp))
            shards.append(name)
            yield chunk
        manifest = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "model": self.model.name,
                    "path": self.path, "n_tokens": self.n_tokens, "d_model": self.d_model,
                    "settings": asdict(self.settings), "shards": shards}
        atomic_write_text(self.cache_dir / "manifest.json", json.dumps(manifest, indent=1))

    def chunks(self) -> Iterator[np.ndarray]:
        """One epoch of (n, d_model) float32 chunks, in a fresh random context/shard order."""
        rng = random.Random(self.settings.seed + self._epoch)
        self._epoch += 1
        if self._cache_complete():
            source = self._cached_chunks(rng)
        else:
            order = np.arange(len(self.contexts))
            rng.shuffle(order)
            source = self._chunks_writing_cache(order) if self.cache_dir is not None else self._model_chunks(order)
        if self.max_token_norm is None:
            return source
        return (chunk[np.array(within_limit(chunk, self.max_token_norm))] for chunk in source)

    def batches(self, batch_size: int, drop_last: bool = False) -> Iterator[mx.array]:
        """One epoch of shuffled (batch_size, d_model) float32 batches from a shuffle buffer."""
        rng = np.random.default_rng(self.settings.seed + self._epoch)
        buffer = np.zeros((0, self.d_model), dtype=np.float32)
        for chunk in self.chunks():
            buffer = np.concatenate([buffer, chunk])
            if len(buffer) < self.shuffle_buffer_tokens:
                continue
            buffer = buffer[rng.permutation(len(buffer))]
            n_out = (len(buffer) - self.shuffle_buffer_tokens // 2) // batch_size * batch_size
            for start in range(0, n_out, batch_size):
                yield mx.array(buffer[start : start + batch_size])
            buffer = buffer[n_out:]
        buffer = buffer[rng.permutation(len(buffer))]
        for start in range(0, len(buffer), batch_size):
            batch = buffer[start : start + batch_size]
            if len(batch) == batch_size or (not drop_last and len(batch)):
                yield mx.array(batch)

    def sample(self, n_tokens: int) -> mx.array:
        """Up to `n_tokens` activations (for normalization statistics and decoder-bias init).

        The sample ignores `max_token_norm`, so that `norm_limit` can be set from it.
        """
        rng = random.Random(self.settings.seed - 1)
        if self._cache_complete():
            source = self._cached_chunks(rng)
        else:
            order = np.arange(len(self.contexts))
            rng.shuffle(order)
            source = self._model_chunks(order)
        parts, have = [], 0
        for chunk in source:
            parts.append(chunk)
            have += len(chunk)
            if have >= n_tokens:
                break
        return mx.array(np.concatenate(parts)[:n_tokens])


def _regroup(chunks: Iterator[np.ndarray], size: int) -> Iterator[np.ndarray]:
    """Re-cut a stream of (n_i, d) chunks into (size, d) chunks (the last may be shorter)."""
    pending: list[np.ndarray] = []
    have = 0
    for chunk in chunks:
        pending.append(chunk)
        have += len(chunk)
        if have >= size:
            joined = np.concatenate(pending)
            for start in range(0, len(joined) - size + 1, size):
                yield joined[start : start + size]
            rest = joined[len(joined) // size * size :]
            pending, have = ([rest] if len(rest) else []), len(rest)
    if have:
        yield np.concatenate(pending)


def split_documents(texts: Sequence[str], validation_split: float, seed: int) -> tuple[list[str], list[str]]:
    """Hold out whole documents: (train, validation) texts, shuffled by `seed`.

    A single document is split at a paragraph boundary near the split point instead.
    """
    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise DataError("the dataset is empty: pass at least one non-empty text")
    if validation_split <= 0:
        return list(texts), []
    if len(texts) == 1:
        text = texts[0]
        cut = int(len(text) * (1 - validation_split))
        newline = text.rfind("\n", 0, cut)
        cut = newline if newline > 0 else cut
        return [text[:cut]], [text[cut:]]
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(len(texts) * validation_split))
    val = [texts[i] for i in order[:n_val]]
    train = [texts[i] for i in order[n_val:]]
    return train, val
