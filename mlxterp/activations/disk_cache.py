"""The activation cache on disk: safetensors shards and the manifest that records them.

A shard is one safetensors file of arrays with one row per token ("activations", (rows, width)
float32, and "positions", (rows, 2) int32: the row's context and position). The manifest (manifest.json, always written atomically, after the shard it names)
says which activations the cache holds, which shards are complete and how far the capture got,
so an interrupted capture resumes from its last complete shard. Shards are read a block of rows
at a time through `safe_open`, which maps the file and copies out only the rows asked for, so
reading never holds more than a block of a shard in memory whatever the shard's or cache's size.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save

from ..errors import DataError
from ..io_utils import atomic_path, atomic_write_text

CACHE_FORMAT = "mlxterp.activation_cache"
CACHE_VERSION = 5  # 3: the manifest names the model's fingerprint; 4: progress, rows per shard; 5: "positions"
MANIFEST = "manifest.json"
# What a write fails with when the disk (or the user's quota, or the file size limit) is full.
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def read_manifest(cache_dir: Path) -> dict[str, Any] | None:
    """The manifest of `cache_dir`, or None when there is none of this format and version."""
    try:
        manifest = json.loads((cache_dir / MANIFEST).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if manifest.get("format") != CACHE_FORMAT or manifest.get("version") != CACHE_VERSION:
        return None
    return manifest


def write_manifest(cache_dir: Path, manifest: dict[str, Any], rows_to_go: int = 0) -> None:
    """Write `manifest` atomically (the previous one stays whole if this fails)."""
    try:
        atomic_write_text(cache_dir / MANIFEST, json.dumps(manifest, indent=1))
    except OSError as error:
        if error.errno not in DISK_FULL:
            raise
        raise _disk_full(cache_dir, f"writing {MANIFEST}", error, manifest, rows_to_go * _row_bytes(manifest)) from None


def start(cache_dir: Path, manifest: dict[str, Any]) -> None:
    """Begin a capture afresh: record `manifest` (no shards yet), then remove the shards left by
    an earlier capture, which no manifest names any more."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    write_manifest(cache_dir, manifest)
    for stale in cache_dir.glob("shard-*.safetensors"):
        stale.unlink(missing_ok=True)


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


def write_shard(cache_dir: Path, manifest: dict[str, Any], tensors: dict[str, np.ndarray], rows_to_go: int) -> str:
    """Write the next shard of the capture `manifest` records (atomically: on any error, the
    partial file is removed) and return its name; the caller records it in the manifest.

    A full disk is a DataError saying how much space the rest of the capture needs."""
    name = shard_name(len(manifest["shards"]))
    data = save({key: np.ascontiguousarray(value) for key, value in tensors.items()})
    try:
        with atomic_path(cache_dir / name) as tmp, open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())  # on disk before the manifest names it
    except OSError as error:
        if error.errno not in DISK_FULL:
            raise
        rows = len(next(iter(tensors.values())))
        needed = len(data) + rows_to_go * len(data) // max(rows, 1)
        raise _disk_full(cache_dir, f"writing {name} ({_size(len(data))})", error, manifest, needed) from None
    return name


def read_rows(path: Path, start: int = 0, stop: int | None = None, tensor: str = "activations") -> np.ndarray:
    """Rows [start, stop) of `tensor` in the shard at `path`, copied out of the mapped file."""
    try:
        with safe_open(str(path), framework="numpy") as shard:
            rows = shard.get_slice(tensor)
            return np.array(rows[start : rows.get_shape()[0] if stop is None else stop])
    except (OSError, SafetensorError) as error:
        raise DataError(f"the activation cache {path.parent} is damaged: its shard {path.name} cannot be read "
                        f"({error}). Delete that folder to capture the activations afresh") from None


def shards(cache_dir: Path, manifest: dict[str, Any]) -> Iterator[np.ndarray]:
    """The manifest's shards whole, in the order they were captured."""
    for name in manifest["shards"]:
        yield read_rows(cache_dir / name)


def shuffled_blocks(cache_dir: Path, manifest: dict[str, Any], block_rows: int,
                    rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Every row of the cache once, as blocks of up to `block_rows` consecutive rows of a shard,
    the blocks of all shards in one random order (a shuffle buffer then mixes the rows)."""
    counts = np.asarray(manifest["shard_rows"], dtype=np.int64)
    per_shard = -(-counts // block_rows)
    shard_of = np.repeat(np.arange(len(counts)), per_shard)
    block_of = np.arange(len(shard_of)) - np.repeat(np.cumsum(per_shard) - per_shard, per_shard)
    for j in rng.permutation(len(shard_of)):
        i, start = int(shard_of[j]), int(block_of[j]) * block_rows
        yield read_rows(cache_dir / manifest["shards"][i], start, min(start + block_rows, int(counts[i])))


def warn_if_short(cache_dir: Path, needed: int) -> None:
    """Warn, before a capture starts, when its disk has less free space than the cache needs."""
    free = shutil.disk_usage(cache_dir).free
    if free < needed:
        warnings.warn(f"the activation cache {cache_dir} needs about {_size(needed)} and its disk has {_size(free)} "
                      "free: the capture will stop with an error when the disk fills (pass a cache_dir on a "
                      "larger disk, or max_tokens)", stacklevel=3)


def _row_bytes(manifest: dict[str, Any]) -> int:
    return 4 * int(manifest.get("d_model", 0))


def _disk_full(cache_dir: Path, what: str, error: OSError, manifest: dict[str, Any], needed: int) -> DataError:
    free = shutil.disk_usage(cache_dir).free
    return DataError(
        f"the disk holding the activation cache {cache_dir} is full: {what} failed ({error.strerror}). "
        f"The {len(manifest['shards'])} complete shards and the manifest are intact, and the partial file "
        f"was removed. The rest of the capture needs about {_size(needed)} more ({_size(free)} free now): "
        "free that much space and run again (the capture resumes from its last complete shard), or pass "
        "a cache_dir on a larger disk, or fewer tokens (max_tokens)")


def _size(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:.1f} MiB" if n_bytes < 2**30 else f"{n_bytes / 2**30:.2f} GiB"
