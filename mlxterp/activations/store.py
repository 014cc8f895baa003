"""Activation store: stream one hook point's activations (or several, captured by one forward and
served side by side in each row) over a text dataset, shuffled and cached.

Texts are packed into contexts (`pack_texts`); only the positions that count are kept. With
`max_token_norm` set, tokens whose activation norm exceeds it are dropped too (the norm limit).
Tokens from many documents are mixed in a shuffle buffer, so memory stays bounded by the buffer
whatever the dataset size. With `cache_dir`, the first pass writes safetensors shards and later
epochs (or another SAE on the same hook point) read them instead of running the model. Each shard
also holds every row's provenance, "positions" (n, 2) int32 = (index into `packed`, position in
that context), so that a scan can encode the cached rows and still show their tokens
(`cached_rows`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import random
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import mlx.core as mx
import numpy as np
from safetensors.numpy import load_file, save_file
from tqdm.auto import tqdm

from ..batching import rebatch
from ..errors import DataError
from ..hookpoint import HookPoint
from ..io_utils import atomic_path, atomic_write_text
from .contexts import ContextSettings, pack_texts
from .norm_limit import within_limit
from .shards import check_cache_identity

if TYPE_CHECKING:
    from ..model import InterpretableModel

CACHE_FORMAT = "mlxterp.activation_cache"
CACHE_VERSION = 4  # 3: the manifest names the model's fingerprint; 4: shards hold "positions"


class ActivationStore:
    """Activations (n_tokens, d_model) at `hook` over a dataset, served in batches.

    `hook` may be a sequence of hook points: one forward captures them all and a row holds
    their activations side by side, (n_tokens, len(hooks) * d_model) in `hooks` order
    (`columns(i)` slices hook i's); the cache holds them all.

    `batches(batch_size)` yields shuffled float32 mx.arrays for one epoch; it runs the model
    on the first epoch (writing the cache when `cache_dir` is set) and reads the cache after.
    The cache holds every kept token; `max_token_norm` (None: no limit) filters what is served,
    so changing it never invalidates the cache. `max_tokens` caps the tokens per epoch.
    """

    def __init__(
        self,
        model: "InterpretableModel",
        texts: Sequence[str],
        hook: HookPoint | Sequence[HookPoint],
        contexts: ContextSettings = ContextSettings(),
        *,
        cache_dir: str | os.PathLike | None = None,
        max_tokens: int | None = None,
        seed: int = 0,
        contexts_per_forward: int = 8,
        shuffle_buffer_tokens: int = 1 << 16,
        progress: bool = True,
        name: str = "train",
        max_token_norm: float | None = None,
    ):
        if not texts:
            raise DataError("the dataset is empty: pass at least one non-empty text")
        self.model = model
        self.hooks = (hook,) if isinstance(hook, HookPoint) else tuple(hook)
        if not self.hooks or len(set(self.hooks)) != len(self.hooks):
            raise DataError(f"the store needs one or more distinct hook points, got {hook!r}")
        self.hook = self.hooks[0]
        self.settings = contexts
        self.seed = seed
        self.contexts_per_forward = contexts_per_forward
        self.packed = pack_texts(model, texts, contexts)
        self.contexts, self.keep = self.packed.tokens, self.packed.keep
        packed = self.packed
        self.max_tokens = max_tokens
        self.n_tokens = packed.n_tokens if max_tokens is None else min(packed.n_tokens, max_tokens)
        self.shuffle_buffer_tokens = shuffle_buffer_tokens
        self.progress = progress
        self.name = name
        self.max_token_norm = max_token_norm
        self.cache_dir = Path(cache_dir) / self._cache_key(texts) if cache_dir else None
        self._epoch = 0

    @property
    def d_model(self) -> int:
        """Width of a row: the model's d_model per hook point."""
        return self.model.d_model * len(self.hooks)

    def columns(self, i: int) -> slice:
        """The columns of a row that hold hook point `self.hooks[i]`."""
        return slice(i * self.model.d_model, (i + 1) * self.model.d_model)

    def _hook_key(self):
        return self.hook.to_dict() if len(self.hooks) == 1 else [h.to_dict() | {"port": h.port} for h in self.hooks]

    def _cache_key(self, texts: Sequence[str]) -> str:
        digest = hashlib.sha256()
        for text in texts:
            digest.update(text.encode("utf-8", "replace"))
            digest.update(b"\0")
        meta = json.dumps(
            {"model": self.model.name, "hook": self._hook_key(), "contexts": self.settings.to_dict(),
             "seed": self.seed, "max_tokens": self.max_tokens, "name": self.name}, sort_keys=True
        )
        digest.update(meta.encode())
        return f"{self.name}-{digest.hexdigest()[:16]}"

    # -- producing activations ------------------------------------------------------------
    def _model_chunks(self, order: np.ndarray) -> Iterator[np.ndarray]:
        """(n_kept, d_model) float32 activations of contexts in `order`, a forward at a time."""
        return (chunk for chunk, _ in self._model_rows(order))

    def _model_rows(self, order: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """`_model_chunks` with each row's (context, position), int32 (n_kept, 2), beside it."""
        step = self.contexts_per_forward
        produced = 0
        bar = tqdm(total=self.n_tokens, desc=f"activations ({self.name})", unit="tok",
                   disable=not self.progress, leave=False)
        for start in range(0, len(order), step):
            rows = order[start : start + step]
            with self.model.trace(mx.array(self.contexts[rows]), default_capture=False):
                saved = [getattr(self.model.module(h.path), h.port).save() for h in self.hooks]
            values = mx.concatenate([s.value.astype(mx.float32) for s in saved], axis=-1)
            chunk = np.asarray(values)[self.keep[rows]]
            context, position = np.nonzero(self.keep[rows])
            positions = np.stack([rows[context], position], axis=1).astype(np.int32)
            if not np.isfinite(chunk).all():
                raise DataError(
                    f"the model produced NaN/inf activations at {', '.join(h.path for h in self.hooks)}: "
                    "check the model's weights and dtype (compute in float32 on CPU)"
                )
            if self.max_tokens is not None:
                chunk, positions = chunk[: self.max_tokens - produced], positions[: self.max_tokens - produced]
            produced += len(chunk)
            bar.update(len(chunk))
            yield chunk, positions
            if produced >= self.n_tokens:
                break
        bar.close()

    def _order(self, rng: random.Random) -> np.ndarray:
        """The contexts' indices in a random order drawn from `rng`."""
        order = np.arange(len(self.contexts))
        rng.shuffle(order)
        return order

    def cached_rows(self) -> Iterator[tuple[np.ndarray, np.ndarray]] | None:
        """The cache's rows in the order they were captured, as (activations (n, d_model) float32,
        positions (n, 2) int32) chunks: row i is the activation at `packed` context positions[i, 0],
        position positions[i, 1]; a context's rows are contiguous. None when there is no complete
        cache of this store's version to read (the model has to run)."""
        if not self._cache_complete():
            return None
        shards = json.loads((self.cache_dir / "manifest.json").read_text())["shards"]
        return ((part["activations"], part["positions"])
                for part in (load_file(str(self.cache_dir / shard)) for shard in shards))

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
        if manifest.get("format") != CACHE_FORMAT or manifest.get("version") != CACHE_VERSION:
            return False
        check_cache_identity(manifest, self._identity(), self.cache_dir)
        return manifest.get("n_tokens") == self.n_tokens

    def _identity(self) -> dict:
        return {"model": self.model.name, "model_fingerprint": self.model.fingerprint, "hook": self._hook_key(),
                "contexts": self.settings.to_dict(), "seed": self.seed, "d_model": self.d_model}

    def _chunks_writing_cache(self, order: np.ndarray) -> Iterator[np.ndarray]:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        (self.cache_dir / "manifest.json").unlink(missing_ok=True)  # its shards are about to be replaced
        shards = []
        # The same cut of both streams: tee holds at most one shard of rows between them.
        acts, where = itertools.tee(self._model_rows(order))
        size = self.shuffle_buffer_tokens // 4
        cut = zip(rebatch((a for a, _ in acts), size, drop_last=False),
                  rebatch((p for _, p in where), size, drop_last=False))
        for i, (chunk, positions) in enumerate(cut):
            name = f"shard-{i:05d}.safetensors"
            with atomic_path(self.cache_dir / name) as tmp:
                save_file({"activations": np.ascontiguousarray(chunk),
                           "positions": np.ascontiguousarray(positions)}, str(tmp))
            shards.append(name)
            yield chunk
        manifest = {"format": CACHE_FORMAT, "version": CACHE_VERSION, **self._identity(),
                    "n_tokens": self.n_tokens, "shards": shards}
        atomic_write_text(self.cache_dir / "manifest.json", json.dumps(manifest, indent=1))

    def chunks(self) -> Iterator[np.ndarray]:
        """One epoch of (n, d_model) float32 chunks, in a fresh random context/shard order."""
        rng = random.Random(self.seed + self._epoch)
        self._epoch += 1
        if self._cache_complete():
            source = self._cached_chunks(rng)
        else:
            order = self._order(rng)
            source = self._chunks_writing_cache(order) if self.cache_dir is not None else self._model_chunks(order)
        if self.max_token_norm is None:
            return source
        return (chunk[np.array(within_limit(chunk, self.max_token_norm))] for chunk in source)

    def batches(self, batch_size: int, drop_last: bool = False) -> Iterator[mx.array]:
        """One epoch of shuffled (batch_size, d_model) float32 batches from a shuffle buffer."""
        rng = np.random.default_rng(self.seed + self._epoch)
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

    def fill_cache(self) -> None:
        """Capture the first epoch's contexts into the cache now, unless it is complete (without
        `cache_dir`: nothing to do); then `sample` and every epoch read the cache and the model
        runs over each token once, not once more for the sample."""
        if self.cache_dir is not None and not self._cache_complete():
            for _ in self._chunks_writing_cache(self._order(random.Random(self.seed + self._epoch))):
                pass

    def sample(self, n_tokens: int) -> mx.array:
        """Up to `n_tokens` activations (for normalization statistics and decoder-bias init).

        The sample ignores `max_token_norm`, so that `norm_limit` can be set from it.
        """
        rng = random.Random(self.seed - 1)
        source = self._cached_chunks(rng) if self._cache_complete() else self._model_chunks(self._order(rng))
        parts, have = [], 0
        for chunk in source:
            parts.append(chunk)
            have += len(chunk)
            if have >= n_tokens:
                break
        return mx.array(np.concatenate(parts)[:n_tokens])
