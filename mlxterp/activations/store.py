"""Activation store: stream one hook point's activations (or several, captured by one forward and
served side by side in each row) over a text dataset, shuffled and cached.

Texts are packed into contexts (`pack_texts`); only the positions that count are kept. With
`max_token_norm` set, tokens whose activation norm exceeds it are dropped too (the norm limit).
Tokens from many documents are mixed in a bounded shuffle buffer (`shuffle`). With `cache_dir`,
the first pass writes safetensors shards (`disk_cache`; a capture interrupted resumes from its last
complete shard) and later epochs (or another SAE on the same hook point) read them back a block of
rows at a time, blocks of all shards in random order, instead of running the model: memory stays
bounded by the buffer whatever the dataset size. Each shard also holds every row's provenance,
"positions" (n, 2) int32 = (index into `packed`, position in that context), so that a scan can
encode the cached rows and still show their tokens (`cached_rows`).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import mlx.core as mx
import numpy as np
from tqdm.auto import tqdm

from ..errors import DataError
from ..fast_forward import numpy_exp_forward
from ..hookpoint import HookPoint
from . import disk_cache
from .contexts import ContextSettings, pack_texts
from .norm_limit import within_limit
from .shards import check_cache_identity
from .shuffle import shuffled_batches

if TYPE_CHECKING:
    from ..model import InterpretableModel


class ActivationStore:
    """Activations (n_tokens, d_model) at `hook` over a dataset, served in batches.

    `hook` may be a sequence of hook points: one forward captures them all and a row holds
    their activations side by side, (n_tokens, len(hooks) * d_model) in `hooks` order
    (`columns(i)` slices hook i's); the cache holds them all.

    `batches(batch_size, epoch=None)` yields shuffled float32 mx.arrays for one epoch (the same
    ones for the same epoch); it runs the model on the first epoch (writing the cache when
    `cache_dir` is set) and reads the cache after.
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
        self.packed = packed = pack_texts(model, texts, contexts)
        self.contexts, self.keep = packed.tokens, packed.keep
        self.max_tokens = max_tokens
        self.n_tokens = packed.n_tokens if max_tokens is None else min(packed.n_tokens, max_tokens)
        self.shuffle_buffer_tokens = shuffle_buffer_tokens
        self.shard_rows = max(1, shuffle_buffer_tokens // 4)  # rows per cache shard (a few forwards more)
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
    def _model_chunks(self, order: np.ndarray, produced: int = 0) -> Iterator[np.ndarray]:
        """(n_kept, d_model) float32 activations of contexts in `order`, a forward at a time
        (`produced`: tokens of the epoch served before these, for `max_tokens` and the bar)."""
        return (chunk for chunk, _ in self._model_rows(order, produced))

    def _model_rows(self, order: np.ndarray, produced: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """`_model_chunks` with each row's (context, position), int32 (n_kept, 2), beside it."""
        step = self.contexts_per_forward
        bar = tqdm(total=self.n_tokens, initial=produced, desc=f"activations ({self.name})", unit="tok",
                   disable=not self.progress, leave=False)
        for start in range(0, len(order), step):
            rows = order[start : start + step]
            with numpy_exp_forward(self.model.model), self.model.trace(mx.array(self.contexts[rows]),
                                                                       default_capture=False):
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

    def _capture_order(self, epoch: int = 0) -> np.ndarray:
        """The contexts in the order epoch `epoch` runs them through the model (0: the cache's)."""
        order = np.arange(len(self.contexts))
        random.Random(self.seed + epoch).shuffle(order)
        return order

    def _manifest(self) -> dict | None:
        """The cache's manifest (None: no cache, or none of this format); one written for other
        activations is refused."""
        manifest = disk_cache.read_manifest(self.cache_dir) if self.cache_dir is not None else None
        if manifest is not None:
            check_cache_identity(manifest, self._identity(), self.cache_dir)
        return manifest

    def cached_rows(self) -> Iterator[tuple[np.ndarray, np.ndarray]] | None:
        """The cache's rows in the order they were captured, as (activations (n, d_model) float32,
        positions (n, 2) int32) chunks: row i is the activation at `packed` context positions[i, 0],
        position positions[i, 1]; a context's rows are contiguous. None when there is no complete
        cache of this store's version to read (the model has to run)."""
        if not self._cache_complete():
            return None
        manifest = self._manifest()
        return ((disk_cache.read_rows(self.cache_dir / name), disk_cache.read_rows(self.cache_dir / name, tensor="positions"))
                for name in manifest["shards"])

    def _cache_complete(self) -> bool:
        manifest = self._manifest()
        return manifest is not None and manifest.get("complete") is True and manifest.get("n_tokens") == self.n_tokens

    def _identity(self) -> dict:
        return {"model": self.model.name, "model_fingerprint": self.model.fingerprint, "hook": self._hook_key(),
                "contexts": self.settings.to_dict(), "seed": self.seed, "d_model": self.d_model}

    def _layout(self) -> dict:
        """How the capture is cut into shards; a partial capture resumes only under the same."""
        return {"n_tokens": self.n_tokens, "contexts_per_forward": self.contexts_per_forward,
                "shard_target_rows": self.shard_rows}

    def _resumable(self) -> dict:
        """The manifest to continue the capture from: this cache's when it is complete, or partial
        and laid out alike with its shards there; else a fresh one (the folder's old shards removed)."""
        manifest = self._manifest()
        if manifest is not None and manifest.get("n_tokens") == self.n_tokens and (manifest["complete"] or (
                all(manifest.get(k) == v for k, v in self._layout().items())
                and all((self.cache_dir / name).is_file() for name in manifest["shards"]))):
            return manifest
        manifest = {"format": disk_cache.CACHE_FORMAT, "version": disk_cache.CACHE_VERSION, **self._identity(),
                    **self._layout(), "complete": False, "rows": 0, "contexts_done": 0, "shards": [], "shard_rows": []}
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        disk_cache.warn_if_short(self.cache_dir, self.n_tokens * 4 * self.d_model)
        disk_cache.start(self.cache_dir, manifest)
        return manifest

    def _captured(self) -> Iterator[np.ndarray]:
        """The cache-order activations, a shard at a time: the shards on disk (a capture resumed
        after an interruption; all of them once complete), then the model's for the rest, each
        shard written and recorded in the manifest before it is served."""
        manifest = self._resumable()
        yield from disk_cache.shards(self.cache_dir, manifest)
        yield from self._capture_rest(manifest)

    def _capture_rest(self, manifest: dict) -> Iterator[np.ndarray]:
        """Run the model over the contexts `manifest` has not captured yet (none once complete),
        writing and recording each shard before serving it."""
        if manifest["complete"]:
            return
        order, done = self._capture_order(), manifest["contexts_done"]
        pending: list[tuple[np.ndarray, np.ndarray]] = []
        forwards = self._model_rows(order[done:], produced=manifest["rows"])
        for i, rows in enumerate(forwards, start=1):
            pending.append(rows)
            if sum(len(chunk) for chunk, _ in pending) >= self.shard_rows:
                yield self._write_shard(manifest, pending, min(done + i * self.contexts_per_forward, len(order)))
                pending = []
        if pending:
            yield self._write_shard(manifest, pending, len(order))
        manifest["complete"] = True
        disk_cache.write_manifest(self.cache_dir, manifest)

    def _write_shard(self, manifest: dict, pending: list[tuple[np.ndarray, np.ndarray]], contexts_done: int) -> np.ndarray:
        """Write the (activations, positions) `pending` as the next shard, then record it (and the
        capture's progress); returns the activations."""
        rows, positions = (np.concatenate(part) for part in zip(*pending))
        rows_to_go = self.n_tokens - manifest["rows"] - len(rows)
        tensors = {"activations": rows, "positions": positions}
        manifest["shards"].append(disk_cache.write_shard(self.cache_dir, manifest, tensors, rows_to_go))
        manifest["shard_rows"].append(len(rows))
        manifest["rows"] += len(rows)
        manifest["contexts_done"] = contexts_done
        disk_cache.write_manifest(self.cache_dir, manifest, rows_to_go)
        return rows

    def _next_epoch(self, epoch: int | None) -> int:
        if epoch is None:
            epoch = self._epoch
        self._epoch = epoch + 1
        return epoch

    def chunks(self, epoch: int | None = None) -> Iterator[np.ndarray]:
        """One epoch of (n, d_model) float32 chunks (default: the epoch after the last one served).

        Without a cache, epoch e runs the model over the contexts in a random order of its own.
        With `cache_dir`, epoch 0 serves the cache in capture order (capturing what is not on
        disk yet), and later epochs read it back as blocks of rows from all shards in a random
        order: the same chunks whether the cache was written by this run or an earlier one."""
        epoch = self._next_epoch(epoch)
        if self.cache_dir is None:
            source = self._model_chunks(self._capture_order(epoch))
        elif epoch == 0 or not self._cache_complete():
            source = self._captured()
        else:
            source = disk_cache.shuffled_blocks(self.cache_dir, self._manifest(), max(1, self.shard_rows // 4),
                                                np.random.default_rng([self.seed % 2**32, epoch, 1]))
        if self.max_token_norm is None:
            return source
        return (chunk[np.array(within_limit(chunk, self.max_token_norm))] for chunk in source)

    def batches(self, batch_size: int, drop_last: bool = False, epoch: int | None = None) -> Iterator[mx.array]:
        """One epoch of shuffled (batch_size, d_model) float32 batches (`chunks(epoch)` through a
        shuffle buffer of `shuffle_buffer_tokens` rows). The same `epoch` gives the same batches,
        which a run resumed mid-epoch relies on."""
        epoch = self._next_epoch(epoch)
        rng = np.random.default_rng([self.seed % 2**32, epoch, 0])
        batches = shuffled_batches(self.chunks(epoch), batch_size, self.shuffle_buffer_tokens, rng, drop_last)
        return (mx.array(batch) for batch in batches)

    def fill_cache(self) -> None:
        """Capture the first epoch's contexts into the cache now, unless it is complete (without
        `cache_dir`: nothing to do); then `sample` and every epoch read the cache and the model
        runs over each token once."""
        if self.cache_dir is not None and not self._cache_complete():
            for _ in self._capture_rest(self._resumable()):  # shards already on disk are not read
                pass

    def sample(self, n_tokens: int) -> mx.array:
        """The first `n_tokens` activations of the cache order (for normalization statistics and
        decoder-bias init): the same rows whether the model or the cache gives them, so a resumed
        run gets the sample (and norm limit) of the run it resumes. With `cache_dir` they start
        the cache, and epoch 0 continues from there.

        The sample ignores `max_token_norm`, so that `norm_limit` can be set from it.
        """
        source = self._captured() if self.cache_dir is not None else self._model_chunks(self._capture_order())
        parts, have = [], 0
        for chunk in source:
            parts.append(chunk[: n_tokens - have])
            have += len(parts[-1])
            if have >= n_tokens:
                break
        source.close()
        return mx.array(np.concatenate(parts))
