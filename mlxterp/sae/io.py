"""SAE files: one safetensors file with a JSON header naming its format, version and metadata.

Layout (format "mlxterp.sae", version 1; docs/sae.md "File format"):
  tensors  W_enc (d_hidden, d_model), b_enc (d_hidden,), W_dec (d_hidden, d_model) unless tied,
           b_dec (d_model,), threshold (() or JumpReLU's (d_hidden,)), norm_stats.<name> (normalization statistics);
           transcoders add target_norm_stats.<name> and, with a skip term, W_skip (d_model, d_model)
  header   format, format_version, sae (JSON: constructor arguments), metadata (JSON),
           library_version, checksum_version, checksum (sha256 over every tensor's name, dtype,
           shape and bytes and, from checksum_version 2, every other header entry; files without
           checksum_version hold version 1, tensors only, and still load)
The same container (`write_tensors` / `read_tensors`) holds training checkpoints and FeatureSets;
`SAE.save` / `SAE.load` write and read SAE files with it.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from ..errors import SAEError
from ..io_utils import atomic_path

SAE_FORMAT = "mlxterp.sae"
SAE_FORMAT_VERSION = 1


def library_version() -> str:
    """mlxterp's version string (without importing the package a second time)."""
    return getattr(sys.modules.get("mlxterp"), "__version__", "unknown")


CHECKSUM_VERSION = 2


def checksum(tensors: dict[str, np.ndarray], header: dict[str, str] | None = None) -> str:
    """sha256 hex digest over the tensors' names, dtypes, shapes and bytes, in name order, then
    (version 2) every header entry but "checksum" itself; `header=None` is version 1."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        arr = _c_order(tensors[name])
        digest.update(f"{name}|{arr.dtype.str}|{arr.shape}|".encode())
        digest.update(arr.tobytes())
    for key in sorted(header or {}):
        if key != "checksum":
            digest.update(f"{key}\0{header[key]}\0".encode())
    return digest.hexdigest()


def _c_order(value: Any) -> np.ndarray:
    # Not np.ascontiguousarray: it turns 0-d arrays into shape (1,).
    arr = np.asarray(value)
    return arr if arr.flags.c_contiguous else np.ascontiguousarray(arr)


def write_tensors(
    path: str | os.PathLike, tensors: dict[str, Any], header: dict[str, Any], format_name: str, version: int
) -> None:
    """Atomically write `tensors` (name -> mx/np array) and a JSON-able `header` to one safetensors file."""
    arrays = {name: _c_order(value) for name, value in tensors.items()}
    try:
        meta = {key: json.dumps(value) for key, value in header.items()}
    except TypeError as exc:
        raise SAEError(f"metadata must be JSON-able (numbers, strings, lists, dicts): {exc}") from None
    meta.update(format=format_name, format_version=str(version), library_version=library_version(),
                checksum_version=str(CHECKSUM_VERSION))
    meta["checksum"] = checksum(arrays, meta)
    with atomic_path(path) as tmp:
        save_file(arrays, str(tmp), metadata=meta)


def read_tensors(
    path: str | os.PathLike, format_name: str, version: int, what: str
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(tensors, header) of a file `write_tensors` wrote; anything else raises SAEError.

    `what` names the kind of file in messages ("SAE", "checkpoint", "feature set").
    """
    path = Path(path)
    if not path.exists():
        raise SAEError(f"no {what} file at {path}: check the path (save one with .save(path))")
    if path.is_dir():
        raise SAEError(f"{path} is a directory; an mlxterp {what} is a single safetensors file")
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except Exception as exc:
        raise SAEError(
            f"{path} is not a readable safetensors file ({exc}); it may be truncated or corrupt: "
            f"save the {what} again"
        ) from None
    found = meta.get("format")
    if found != format_name:
        raise SAEError(
            f"{path} is not an mlxterp {what} file (format {found!r}, expected {format_name!r}); "
            + ("to load an SAE of SAELens, sparsify or Gemma Scope, pass its folder to load_sae "
               "(docs/interop.md)"
               if what == "SAE" else f"pass a file written by mlxterp's {what} save")
        )
    try:
        found_version = int(meta.get("format_version", ""))
    except ValueError:
        raise SAEError(f"{path}: format_version {meta.get('format_version')!r} is not a number") from None
    if found_version > version:
        raise SAEError(
            f"{path} has {what} format version {found_version}, newer than this mlxterp reads "
            f"({version}): upgrade mlxterp (it was written by mlxterp {meta.get('library_version')})"
        )
    checksum_version = meta.get("checksum_version", "1")
    if checksum_version not in ("1", str(CHECKSUM_VERSION)):
        raise SAEError(f"{path} has checksum version {checksum_version!r}, which this mlxterp does not know: "
                       f"upgrade mlxterp (it was written by mlxterp {meta.get('library_version')})")
    if meta.get("checksum") != checksum(tensors, meta if checksum_version != "1" else None):
        covered = "tensors" if checksum_version == "1" else "tensors or header (metadata)"
        raise SAEError(f"{path} is corrupt or was edited: its {covered} do not match the checksum in its "
                       f"header; save the {what} again")
    header: dict[str, Any] = {}
    for key, value in meta.items():
        if key in ("format", "format_version", "library_version", "checksum", "checksum_version"):
            header[key] = value
            continue
        try:
            header[key] = json.loads(value)
        except json.JSONDecodeError:
            raise SAEError(f"{path} is corrupt: header entry {key!r} is not valid JSON") from None
    return tensors, header


def sae_tensors(sae) -> dict[str, mx.array]:
    """The SAE's arrays by flat name (W_enc, b_enc, [W_dec], b_dec, threshold, norm_stats.*)."""
    return dict(tree_flatten(sae.parameters()))


def sae_spec(sae) -> dict[str, Any]:
    """The constructor arguments that rebuild `sae`'s shape and kind."""
    spec = {"d_model": sae.d_model, "d_hidden": sae.d_hidden, "k": sae.k, "architecture": sae.architecture,
            "tied_weights": sae.tied_weights, "normalization": sae.normalization}
    if getattr(sae, "transcode", False):
        spec.update(transcode=True, skip=sae.skip)
    return spec
