"""SAEs of other libraries, in and out: SAELens, sparsify (folders and run directories), Gemma Scope.

Readers return the parts `SAE.from_parts` builds an SAE from (spec, tensors, metadata), so nothing
is half-loaded: every name, shape and setting is checked before an SAE exists. Writers fold the
SAE's input normalization into the weights, since neither library stores mlxterp's statistics.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import SAEError
from . import gemmascope, saelens, sparsify
from .common import Parts, raw_space_transcoder, raw_space_weights

FOLDER_FORMATS = {
    "saelens": "cfg.json + sae_weights.safetensors",
    "sparsify": "cfg.json + sae.safetensors",
    "sparsify run": "one sparsify folder per hook point (choose one with hookpoint=)",
    "gemma-scope": "params.npz or params.safetensors",
}
WRITE_FORMATS = ("mlxterp", "saelens", "sparsify")
# A foreign weights file given by itself stands for its folder.
FOREIGN_FILES = (saelens.WEIGHTS, sparsify.WEIGHTS, "cfg.json") + gemmascope.FILES


def foreign_folder(path: Path) -> Path | None:
    """The folder a foreign SAE at `path` lives in, or None when `path` is a single mlxterp file."""
    if path.is_dir():
        return path
    return path.parent if path.is_file() and path.name in FOREIGN_FILES else None


def read_folder(folder: Path, hookpoint: str | None = None) -> Parts:
    """The parts of the foreign SAE in `folder` (a sparsify run needs `hookpoint`)."""
    if saelens.is_saelens(folder):
        parts = saelens.read(folder)
    elif sparsify.is_sparsify(folder):
        parts = sparsify.read(folder)
    elif gemmascope.params_file(folder) is not None:
        parts = gemmascope.read(folder)
    elif sparsify.run_hookpoints(folder):
        return sparsify.read_run(folder, hookpoint)
    else:
        known = "; ".join(f"{name} ({files})" for name, files in FOLDER_FORMATS.items())
        found = sorted(p.name for p in folder.iterdir())[:12]
        raise SAEError(f"{folder} holds no SAE format mlxterp knows (it has {found}); known: an mlxterp "
                       f".safetensors/.mlx file, or a folder: {known}")
    if hookpoint is not None:
        raise SAEError(f"hookpoint={hookpoint!r} chooses among the SAEs of a sparsify run, and {folder} holds "
                       "one SAE: leave hookpoint out (pass layer=/component= to say where it reads)")
    return parts


def write_foreign(sae: Any, path: str | os.PathLike, format: str) -> None:
    """Write `sae` as a folder that `format` ("saelens" or "sparsify") loads as it is."""
    if format not in WRITE_FORMATS:
        raise SAEError(f"format={format!r} is not one mlxterp writes: use one of {', '.join(WRITE_FORMATS)}")
    if sae.tied_weights:
        raise SAEError("a tied-weights SAE has no separate decoder to export: untie it first")
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise SAEError(f"{folder} is a file; format={format!r} writes a folder: pass a folder path")
    if sae.transcode:
        if format != "sparsify":
            raise SAEError(f"format={format!r} holds SAEs; write transcoders with format='sparsify' (or 'mlxterp')")
        return sparsify.write(sae, folder, *raw_space_transcoder(sae))
    if sae.architecture in ("batchtopk", "matryoshka_batchtopk"):
        sae = sae.to_jumprelu()  # both libraries' inference forms keep per-latent thresholds, not top-k of a batch
    W_enc, b_enc, W_dec, b_dec = raw_space_weights(sae)
    if format == "sparsify":
        sparsify.write(sae, folder, W_enc, b_enc, W_dec, b_dec)
    else:
        # Folding reparametrizes without changing pre-activations, so thresholds carry over as they are.
        threshold = np.asarray(sae.threshold) if sae.architecture == "jumprelu" else None
        saelens.write(sae, folder, W_enc, b_enc, W_dec, b_dec, threshold)

