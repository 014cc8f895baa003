"""sparsify (EleutherAI) SAEs and transcoders: a folder with cfg.json + sae.safetensors, or a run
directory holding one such folder per hook point (named by its module path, e.g. "layers.6").

A sparsify transcoder ("transcode": true) at hook point "layers.L.mlp" reads that module's input
and reconstructs its output: mlxterp's "mlp_in" -> "mlp"; "skip_connection" adds W_skip."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from ...errors import SAEError
from ...io_utils import atomic_path, atomic_write_text
from .common import Parts, build_parts, check_shape, config_int, read_json, read_safetensors, require
from .hooknames import SPARSIFY_HOOK_NAMES, hook_name, parse_hook_name

WEIGHTS = "sae.safetensors"


def is_sparsify(folder: Path) -> bool:
    return (folder / "cfg.json").is_file() and (folder / WEIGHTS).is_file()


def run_hookpoints(folder: Path) -> list[str]:
    """The hook points of a sparsify run directory (subfolders holding a sparsify SAE), sorted."""
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and is_sparsify(p)) if folder.is_dir() else []


def read_run(folder: Path, hookpoint: str | None) -> Parts:
    available = run_hookpoints(folder)
    if hookpoint is None:
        raise SAEError(f"{folder} is a sparsify run with SAEs for {len(available)} hook points "
                       f"({', '.join(available)}): "
                       f"choose one, e.g. load_sae(path, hookpoint={available[0]!r})")
    if hookpoint not in available:
        raise SAEError(f"{folder} has no SAE for hook point {hookpoint!r}: choose one of {', '.join(available)}")
    run_cfg = read_json(folder / "config.json") if (folder / "config.json").is_file() else {}
    return read(folder / hookpoint, run_cfg)


def read(folder: Path, run_cfg: dict[str, Any] | None = None) -> Parts:
    cfg = read_json(folder / "cfg.json")
    run_cfg = run_cfg or {}
    weights = folder / WEIGHTS
    activation = cfg.get("activation", "topk")
    if activation != "topk":
        raise SAEError(f"{folder}: sparsify activation {activation!r} is not supported: mlxterp reads 'topk' SAEs")
    transcode, skip = bool(cfg.get("transcode")), bool(cfg.get("skip_connection"))
    if skip and not transcode:
        raise SAEError(f"{folder} is a sparsify SAE with a skip connection but no transcode: mlxterp reads skip "
                       "terms of transcoders only")
    d_in, k = config_int(folder, cfg, "d_in"), config_int(folder, cfg, "k")
    d_hidden = cfg.get("num_latents") or d_in * config_int(folder, cfg, "expansion_factor")
    tensors = read_safetensors(weights)
    require(weights, tensors, ("encoder.weight", "encoder.bias", "W_dec", "b_dec"))
    if ("W_skip" in tensors) != skip:
        raise SAEError(f"{folder}: cfg.json says skip_connection={skip} but {weights} "
                       f"{'holds' if 'W_skip' in tensors else 'lacks'} W_skip: the folder is damaged")
    source = f"{folder / 'cfg.json'} (d_in={d_in}, {d_hidden} latents)"
    shapes = {"encoder.weight": (d_hidden, d_in), "encoder.bias": (d_hidden,), "W_dec": (d_hidden, d_in),
              "b_dec": (d_in,), **({"W_skip": (d_in, d_in)} if skip else {})}
    for name, shape in shapes.items():
        check_shape(weights, name, tensors[name], shape, source)
    if k > d_hidden:
        raise SAEError(f"{folder}: k={k} exceeds the {d_hidden} latents: the config is damaged")
    hook = cfg.get("hookpoint") or folder.name
    try:
        layer, component = parse_hook_name(hook)
    except SAEError:
        if cfg.get("hookpoint"):
            raise
        layer = component = None  # a folder name that is no module path: the caller says where
    source_meta = {"format": "sparsify", "hookpoint": hook if layer is not None else None,
                   "model_name": cfg.get("model") or run_cfg.get("model")}
    metadata: dict[str, Any] = {"source": source_meta}
    if transcode and component != "mlp":
        raise SAEError(f"{folder} is a sparsify transcoder at {hook!r}: mlxterp reads transcoders of an MLP "
                       "(hookpoint 'layers.L.mlp': its input after the norm -> its output)")
    if layer is not None:
        metadata["hook_point"] = {"layer": layer, "component": "mlp_in" if transcode else component, "path": ""}
        if transcode:
            metadata["output_hook_point"] = {"layer": layer, "component": "mlp", "path": ""}
    ctx = cfg.get("ctx_len") or run_cfg.get("ctx_len")
    if isinstance(ctx, int) and ctx > 0:
        metadata["context_length"] = ctx
    return build_parts("topk", tensors["encoder.weight"], tensors["encoder.bias"], tensors["W_dec"],
                       tensors["b_dec"], k=k, metadata=metadata, transcode=transcode, W_skip=tensors.get("W_skip"))


def write(sae: Any, folder: Path, W_enc: np.ndarray, b_enc: np.ndarray, W_dec: np.ndarray, b_dec: np.ndarray,
          W_skip: np.ndarray | None = None) -> None:
    if sae.architecture != "topk":
        raise SAEError(f"sparsify reads TopK SAEs only, this one is {sae.architecture!r}: export it with "
                       "format='saelens'")
    point, meta = sae.output_hook_point, sae.metadata
    if sae.transcode and point is not None and (point.component != "mlp" or sae.hook_point.component != "mlp_in"):
        raise SAEError(f"sparsify's transcoders read a module's input and write its output; this one reads "
                       f"{sae.hook_point.label} and writes {point.label}: only MLP transcoders ('mlp_in' -> "
                       "'mlp') export")
    cfg = {"activation": "topk", "expansion_factor": max(1, sae.d_hidden // sae.d_model),
           "normalize_decoder": True, "num_latents": sae.d_hidden, "k": sae.k, "multi_topk": False,
           "skip_connection": W_skip is not None, "transcode": sae.transcode, "d_in": sae.d_model,
           # sparsify drops unknown cfg keys when loading; mlxterp reads them back.
           "hookpoint": hook_name(SPARSIFY_HOOK_NAMES, point.layer, point.component) if point else None,
           "model": meta.get("model_name") or (meta.get("source") or {}).get("model_name"),
           "ctx_len": meta.get("context_length"),
           "normalization_folded": meta["normalization"]}
    arrays = {"encoder.weight": W_enc, "encoder.bias": b_enc, "W_dec": W_dec, "b_dec": b_dec}
    if W_skip is not None:
        arrays["W_skip"] = W_skip
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / WEIGHTS) as tmp:
        save_file({n: np.ascontiguousarray(a, np.float32) for n, a in arrays.items()}, str(tmp),
                  metadata={"format": "pt"})
    atomic_write_text(folder / "cfg.json", json.dumps(cfg, indent=2))
