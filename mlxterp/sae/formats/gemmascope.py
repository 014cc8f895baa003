"""Gemma Scope SAEs (JumpReLU; Lieberum et al. 2024): a folder with params.npz or params.safetensors
holding W_enc (d_model, d_sae), W_dec (d_sae, d_model), b_enc, b_dec, threshold. They encode
x @ W_enc + b_enc (b_dec is not removed first) and name no model or hook point: it is read from
the release's folder names when they say it ("gemma-scope-2b-pt-res/layer_12/..."), else the
caller passes layer= and component=."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import SAEError
from .common import Parts, build_parts, check_shape, read_safetensors, require

FILES = ("params.npz", "params.safetensors")
NAMES = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")
# Release site -> component; "att" SAEs read the heads before the output projection (hook_z).
SITES = {"res": "output", "mlp": "mlp"}


def params_file(folder: Path) -> Path | None:
    return next((folder / name for name in FILES if (folder / name).is_file()), None)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        # allow_pickle=False: an .npz can hold pickled objects, and loading one could run code.
        with np.load(path, allow_pickle=False) as data:
            return {name: np.asarray(data[name]) for name in data.files}
    except ValueError as exc:
        raise SAEError(f"{path} holds pickled objects ({exc}), which mlxterp never loads: use the release's "
                       "plain-array params.npz") from None
    except Exception as exc:
        raise SAEError(f"{path} is not a readable .npz file ({exc}): download it again") from None


def _where(folder: Path) -> tuple[int | None, str | None]:
    text = folder.resolve().as_posix()
    layer = re.search(r"layer_(\d+)", text)
    site = re.search(r"gemma-scope-[^/]*?-(res|mlp|att)\b", text)
    if site and site.group(1) == "att":
        raise SAEError(f"{folder} is a Gemma Scope attention SAE, which reads the heads before the output "
                       "projection (hook_z): mlxterp has no hook point for that")
    if layer and site:
        return int(layer.group(1)), SITES[site.group(1)]
    return None, None


def read(folder: Path) -> Parts:
    path = params_file(folder)
    raw = _read_npz(path) if path.suffix == ".npz" else read_safetensors(path)
    tensors = {}
    for name, value in raw.items():  # some conversions spell them w_enc, w_dec
        canonical = next((n for n in NAMES if n.lower() == name.lower()), name)
        tensors[canonical] = value
    if "threshold" not in tensors:
        raise SAEError(f"{path} has no 'threshold' tensor, which a Gemma Scope JumpReLU SAE needs: the "
                       "download is incomplete")
    require(path, tensors, NAMES)
    if tensors["W_dec"].ndim != 2:
        raise SAEError(f"{path}: W_dec has shape {tensors['W_dec'].shape}, expected (d_sae, d_model)")
    d_sae, d_model = tensors["W_dec"].shape
    source = f"W_dec's shape ({d_sae}, {d_model})"
    for name, shape in (("W_enc", (d_model, d_sae)), ("b_enc", (d_sae,)), ("b_dec", (d_model,)),
                        ("threshold", (d_sae,))):
        check_shape(path, name, tensors[name], shape, source)
    layer, component = _where(folder)
    metadata: dict[str, Any] = {"source": {"format": "gemma-scope", "model_name": None, "file": path.name}}
    if layer is not None:
        metadata["hook_point"] = {"layer": layer, "component": component, "path": ""}
    return build_parts("jumprelu", tensors["W_enc"].T, tensors["b_enc"], tensors["W_dec"], tensors["b_dec"],
                       threshold=tensors["threshold"], subtract_b_dec=False, metadata=metadata)
