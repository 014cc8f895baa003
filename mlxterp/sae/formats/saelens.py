"""SAELens SAEs: a folder with cfg.json + sae_weights.safetensors (W_enc (d_in, d_sae), b_enc, W_dec
(d_sae, d_in), b_dec, [threshold]). Reads the 6.x config (model and hook under "metadata") and the
flat pre-6 one; writes 6.x."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from ...errors import SAEError
from ...io_utils import atomic_path, atomic_write_text
from .common import Parts, build_parts, check_shape, config_int, read_json, read_safetensors, require
from .hooknames import SAELENS_HOOK_NAMES, hook_name, parse_hook_name

WEIGHTS = "sae_weights.safetensors"
# SAELens architecture -> mlxterp's.
ARCHITECTURES = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu", "gated": "jumprelu"}
GATED = ("W_enc", "b_gate", "b_mag", "r_mag", "W_dec", "b_dec")
# Normalizations SAELens applies at inference (it treats expected_average_only_in as the identity:
# training folds the scale into the weights).
IDENTITY_NORMALIZATIONS = ("none", "expected_average_only_in")
WRITTEN_VERSION = "6.0.0"  # any 6.x: SAELens reads older configs through its pre-6 converter


def is_saelens(folder: Path) -> bool:
    return (folder / "cfg.json").is_file() and (folder / WEIGHTS).is_file()


def _flat_config(cfg: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(settings, metadata): 6.x keeps model/hook under "metadata"; pre-6 configs are flat."""
    meta = cfg.get("metadata") if isinstance(cfg.get("metadata"), dict) else {}
    merged = {**cfg, **meta}
    if "hook_name" not in merged and "hook_point" in merged:
        merged["hook_name"] = merged["hook_point"]
    architecture = merged.get("architecture", "standard")
    activation = merged.get("activation_fn") or merged.get("activation_fn_str")
    if "architecture" not in merged and activation == "topk":
        architecture = "topk"
        merged.setdefault("k", (merged.get("activation_fn_kwargs") or {}).get("k"))
    norm = merged.get("normalize_activations")
    if isinstance(norm, bool) or norm is None:
        norm = "expected_average_only_in" if norm else "none"
    merged.update(architecture=architecture, normalize_activations=norm)
    return merged, meta


def read(folder: Path) -> Parts:
    cfg_path, weights = folder / "cfg.json", folder / WEIGHTS
    cfg, _ = _flat_config(read_json(cfg_path))
    arch = cfg["architecture"]
    if arch not in ARCHITECTURES:
        raise SAEError(f"{cfg_path}: SAELens architecture {arch!r} is not supported: mlxterp reads "
                       f"{', '.join(ARCHITECTURES)}")
    norm = cfg["normalize_activations"]
    if norm not in IDENTITY_NORMALIZATIONS + ("constant_norm_rescale",):
        raise SAEError(f"{cfg_path}: normalize_activations={norm!r} is not supported: mlxterp reads "
                       f"{', '.join(IDENTITY_NORMALIZATIONS)} and constant_norm_rescale")
    if cfg.get("reshape_activations", "none") not in (None, "none") or cfg.get("hook_head_index") is not None:
        raise SAEError(f"{cfg_path}: this SAE reads single attention heads or hook_z, which mlxterp has no "
                       "hook point for")
    d_in, d_sae = config_int(cfg_path, cfg, "d_in"), config_int(cfg_path, cfg, "d_sae")
    tensors = read_safetensors(weights)
    names = ("W_enc", "b_enc", "W_dec", "b_dec") + (("threshold",) if arch == "jumprelu" else ())
    names = GATED if arch == "gated" else names
    if arch == "jumprelu" and "threshold" not in tensors:
        raise SAEError(f"{weights}: a JumpReLU SAE needs its per-latent 'threshold' tensor and this file has "
                       "none: the download is incomplete or the config names the wrong architecture")
    require(weights, tensors, names)
    source = f"{cfg_path} (d_in={d_in}, d_sae={d_sae})"
    shapes = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,),
              "threshold": (d_sae,), "b_gate": (d_sae,), "b_mag": (d_sae,), "r_mag": (d_sae,)}
    for name in names:
        check_shape(weights, name, tensors[name], shapes[name], source)
    if arch == "gated":
        tensors.update(_gated_as_jumprelu(tensors))
    scaling = tensors.get("scaling_factor")
    if scaling is not None and not np.allclose(scaling, 1.0):
        raise SAEError(f"{weights} has a fine-tuning scaling_factor, which mlxterp does not read: fold it "
                       "into W_dec with SAELens first")
    W_enc, b_enc, W_dec = tensors["W_enc"].T.astype(np.float64), tensors["b_enc"].astype(np.float64), tensors["W_dec"]
    k = None
    if arch == "topk":
        k = config_int(cfg_path, cfg, "k")
        if k > d_sae:
            raise SAEError(f"{cfg_path}: k={k} exceeds d_sae={d_sae}: the config is damaged")
        if cfg.get("rescale_acts_by_decoder_norm"):
            # SAELens scales pre-activations by ||W_dec[i]|| and divides them back out when decoding.
            norms = np.linalg.norm(W_dec.astype(np.float64), axis=1)
            W_enc, b_enc, W_dec = W_enc * norms[:, None], b_enc * norms, W_dec / norms[:, None]
    hook = cfg.get("hook_name")
    metadata: dict[str, Any] = {"source": {"format": "saelens", "architecture": arch,
                                           "model_name": cfg.get("model_name"), "hook_name": hook,
                                           "normalize_activations": norm}}
    if hook:
        layer, component = parse_hook_name(str(hook))
        metadata["hook_point"] = {"layer": layer, "component": component, "path": ""}
    if isinstance(cfg.get("context_size"), int) and cfg["context_size"] > 0:
        metadata["context_length"] = cfg["context_size"]
    return build_parts(ARCHITECTURES[arch], W_enc, b_enc, W_dec, tensors["b_dec"], threshold=tensors.get("threshold"),
                       k=k, subtract_b_dec=bool(cfg.get("apply_b_dec_to_input", True)),
                       input_scale=d_in ** 0.5 if norm == "constant_norm_rescale" else None, metadata=metadata)


def _gated_as_jumprelu(t: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A gated SAE's JumpReLU form (Rajamanoharan et al. 2024, gated SAEs with weight sharing).

    SAELens encodes [x W + b_gate > 0] * relu(pre), pre = x W' + b_mag with W' = W e^r_mag. The
    gate is open exactly when pre > b_mag - e^r_mag b_gate; where that threshold is negative, a
    closed gate has pre <= threshold < 0 and relu(pre) = 0 anyway. So the codes are those of
    JumpReLU(W', b_mag, threshold).
    """
    scale = np.exp(t["r_mag"].astype(np.float64))
    return {"W_enc": t["W_enc"].astype(np.float64) * scale, "b_enc": t["b_mag"],
            "threshold": t["b_mag"].astype(np.float64) - scale * t["b_gate"].astype(np.float64)}


def write(sae: Any, folder: Path, W_enc: np.ndarray, b_enc: np.ndarray, W_dec: np.ndarray, b_dec: np.ndarray,
          threshold: np.ndarray | None) -> None:
    arch = {"relu": "standard", "topk": "topk", "jumprelu": "jumprelu"}[sae.architecture]
    point, meta = sae.hook_point, sae.metadata
    metadata = {
        "sae_lens_version": WRITTEN_VERSION, "sae_lens_training_version": WRITTEN_VERSION,
        "model_name": meta.get("model_name") or (meta.get("source") or {}).get("model_name"),
        "hook_name": hook_name(SAELENS_HOOK_NAMES, point.layer, point.component) if point else None,
        "hook_head_index": None, "context_size": meta.get("context_length"),
        "mlxterp_normalization_folded": meta["normalization"],
    }
    cfg: dict[str, Any] = {"architecture": arch, "d_in": sae.d_model, "d_sae": sae.d_hidden, "dtype": "float32",
                           "device": "cpu", "apply_b_dec_to_input": True, "normalize_activations": "none",
                           "reshape_activations": "none", "metadata": metadata}
    if arch == "topk":
        cfg.update(k=sae.k, rescale_acts_by_decoder_norm=False)
    arrays = {"W_enc": W_enc.T, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}
    if threshold is not None:
        arrays["threshold"] = threshold
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / WEIGHTS) as tmp:
        save_file({n: np.ascontiguousarray(a, np.float32) for n, a in arrays.items()}, str(tmp))
    atomic_write_text(folder / "cfg.json", json.dumps(cfg, indent=2))
