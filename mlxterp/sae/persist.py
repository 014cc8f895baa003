"""SAE files in mlxterp's format (docs/sae.md "File format"): `SAE.save`, `SAE.load`, `SAE.from_parts`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import mlx.core as mx
from mlx.utils import tree_unflatten

from ..errors import SAEError
from .formats import write_foreign
from .io import SAE_FORMAT, SAE_FORMAT_VERSION, library_version, read_tensors, sae_spec, sae_tensors, write_tensors


def save_sae(sae, path: str | os.PathLike, format: str = "mlxterp") -> None:
    """Write `sae` to one safetensors file atomically, or a foreign format's folder."""
    if format != "mlxterp":
        return write_foreign(sae, path, format)
    sae.metadata["library_version"] = library_version()
    sae.metadata = sae.metadata  # re-derives the shape entries
    header = {"sae": sae_spec(sae), "metadata": sae.metadata}
    write_tensors(path, sae_tensors(sae), header, SAE_FORMAT, SAE_FORMAT_VERSION)


def load_sae_file(cls, path: str | os.PathLike):
    """An SAE of class `cls` from a file `save_sae` wrote; anything else raises SAEError."""
    tensors, header = read_tensors(path, SAE_FORMAT, SAE_FORMAT_VERSION, "SAE")
    if not isinstance(header.get("sae"), dict):
        raise SAEError(f"{path} lacks the 'sae' header entry describing its shape: save the SAE again")
    sae = sae_from_parts(cls, header["sae"], tensors, path)
    if isinstance(header.get("metadata"), dict):
        sae.metadata = header["metadata"]
    return sae


def sae_from_parts(cls, spec: dict[str, Any], tensors: dict[str, Any], path: Path | str):
    """Rebuild an SAE from `sae_spec` and `sae_tensors` output, checking every name and shape."""
    try:
        sae = cls(**spec)
    except (TypeError, SAEError) as exc:
        raise SAEError(f"{path}: invalid SAE description {spec!r} ({exc})") from None
    expected = sae_tensors(sae)
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise SAEError(f"{path} does not hold this SAE's tensors (missing {missing}, unexpected {extra}): "
                       "the file is damaged or from another program")
    for name, ref in expected.items():
        if tuple(tensors[name].shape) != tuple(ref.shape):
            raise SAEError(f"{path}: tensor {name} has shape {tuple(tensors[name].shape)}, expected "
                           f"{tuple(ref.shape)} for {spec}")
    sae.update(tree_unflatten([(name, mx.array(tensors[name]).astype(mx.float32)) for name in expected]))
    return sae
