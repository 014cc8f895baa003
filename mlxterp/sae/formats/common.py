"""What every foreign-format reader shares: checked tensors -> the SAE's own parts (spec, tensors,
metadata), and folding input normalization into the weights for writers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import SAEError
from ...hookpoint import HookPoint

# Parts `SAE.from_parts` rebuilds an SAE from, plus its metadata.
Parts = tuple[dict[str, Any], dict[str, np.ndarray], dict[str, Any]]


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SAEError(f"{path} is not readable JSON ({exc}): the SAE folder is damaged") from None
    if not isinstance(data, dict):
        raise SAEError(f"{path} holds a JSON {type(data).__name__}, not an object: the SAE folder is damaged")
    return data


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """The file's tensors as float32 numpy arrays (MLX reads the bfloat16 that numpy cannot)."""
    import mlx.core as mx

    try:
        tensors = mx.load(str(path), format="safetensors")
    except Exception as exc:
        raise SAEError(f"{path} is not a readable safetensors file ({exc}): it may be truncated; "
                       "download it again") from None
    return {name: np.array(value.astype(mx.float32)) for name, value in tensors.items()}


def require(path: Path, tensors: dict[str, np.ndarray], names: tuple[str, ...]) -> None:
    missing = [n for n in names if n not in tensors]
    if missing:
        raise SAEError(f"{path} lacks tensor(s) {missing} (it holds {sorted(tensors)}): the file is damaged "
                       "or from another program")


def check_shape(path: Path, name: str, array: np.ndarray, expected: tuple[int, ...], source: str) -> None:
    if tuple(array.shape) != tuple(expected):
        raise SAEError(f"{path}: tensor {name} has shape {tuple(array.shape)} but {source} says {tuple(expected)}: "
                       "the weights and their config disagree (a mismatched or damaged download)")


def config_int(path: Path, cfg: dict[str, Any], key: str) -> int:
    value = cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SAEError(f"{path}: {key!r} must be a positive integer, got {value!r}")
    return value


def build_parts(
    architecture: str,
    W_enc: np.ndarray,
    b_enc: np.ndarray,
    W_dec: np.ndarray,
    b_dec: np.ndarray,
    *,
    threshold: np.ndarray | None = None,
    k: int | None = None,
    subtract_b_dec: bool = True,
    input_scale: float | None = None,
    W_skip: np.ndarray | None = None,
    transcode: bool = False,
    metadata: dict[str, Any],
) -> Parts:
    """The SAE's parts from weights in mlxterp's layout: W_enc, W_dec (d_hidden, d_model).

    `subtract_b_dec=False`: the source encodes x @ W_enc.T + b_enc (no b_dec removed first); mlxterp
    always removes b_dec, so it is folded into b_enc. `input_scale`: the source encodes
    x * input_scale / ||x|| per token (SAELens' constant_norm_rescale), which is mlxterp's
    "unit_norm" with the scale folded into the weights. `transcode`: a transcoder (its input is
    not centred on b_dec), with its skip term `W_skip` (d_model, d_model) when given.
    """
    d_hidden, d_model = W_dec.shape
    f64 = [np.asarray(a, dtype=np.float64) for a in (W_enc, b_enc, W_dec, b_dec)]
    W_enc, b_enc, W_dec, b_dec = f64
    if not subtract_b_dec and not transcode:
        b_enc = b_enc + W_enc @ b_dec
    normalization = "none"
    norm_stats: dict[str, np.ndarray] = {}
    if input_scale is not None:
        # Source: z = f((s*u - b_dec) W_enc + b_enc), out = (z W_dec + b_dec) / s * ||x||, u = x / ||x||.
        W_enc, W_dec, b_dec = W_enc * input_scale, W_dec / input_scale, b_dec / input_scale
        normalization = "unit_norm"
        norm_stats = {"norm_stats.mean": np.zeros(d_model, np.float32)}
    if architecture == "jumprelu":
        if threshold is None:
            raise SAEError("a JumpReLU SAE needs its per-latent threshold, and this one has none: the file is "
                           "incomplete (download it again) or not a JumpReLU SAE")
        thr = np.asarray(threshold, np.float32).reshape(-1) if np.ndim(threshold) else np.full(d_hidden, threshold)
        if thr.shape != (d_hidden,):
            raise SAEError(f"the JumpReLU threshold has shape {np.shape(threshold)}, expected ({d_hidden},): "
                           "one threshold per latent")
    else:
        thr = np.asarray(0.0, np.float32)
    spec = {"d_model": d_model, "d_hidden": d_hidden, "k": k if k is not None else min(32, d_hidden),
            "architecture": architecture, "tied_weights": False, "normalization": normalization}
    tensors = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec, "threshold": thr, **norm_stats}
    if transcode:
        spec.update(transcode=True, skip=W_skip is not None)
        tensors.update({} if W_skip is None else {"W_skip": W_skip})
    tensors = {name: np.asarray(value, np.float32) for name, value in tensors.items()}
    for name, value in tensors.items():
        if not np.all(np.isfinite(value)):
            raise SAEError(f"tensor {name} holds NaN or inf values: the file is damaged")
    return spec, tensors, metadata


def point_metadata(layer: int | None, component: str | None) -> dict[str, Any]:
    """{"hook_point": ...} when both are known (the path is resolved against a model later)."""
    return {"hook_point": HookPoint(layer, component, "").to_dict()} if layer is not None and component else {}


def raw_space_weights(sae: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(W_enc, b_enc, W_dec, b_dec) of `sae` with its input normalization folded in, so that
    codes = f((x - b_dec) @ W_enc.T + b_enc) and x_hat = codes @ W_dec + b_dec on raw activations.
    A transcoder: `raw_space_transcoder`."""
    W_enc, b_enc, W_dec, b_dec = (np.asarray(a, np.float64) for a in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec))
    stats = {name: np.asarray(value, np.float64) for name, value in sae.norm_stats.items()}
    scheme = sae.normalization
    if scheme == "expected_norm":
        s = float(stats["scale"])
        W_enc, W_dec, b_dec = W_enc * s, W_dec / s, b_dec / s
    elif scheme == "standardize":
        mean, std = stats["mean"], stats["std"]
        W_enc, W_dec, b_dec = W_enc / std, W_dec * std, mean + std * b_dec
    elif scheme != "none":
        raise SAEError(f"a {scheme!r} SAE normalizes each token by its own norm, which other libraries "
                       "store differently: export SAEs trained with normalization 'none', "
                       "'expected_norm' or 'standardize'")
    return W_enc, b_enc, W_dec, b_dec


def raw_space_transcoder(sae: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """(W_enc, b_enc, W_dec, b_dec, W_skip or None) of a transcoder with its input and target scales
    folded in: codes = f(x @ W_enc.T + b_enc), y_hat = codes @ W_dec + b_dec + x @ W_skip.T, raw."""
    W_enc, b_enc, W_dec, b_dec = (np.asarray(a, np.float64) for a in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec))
    W_skip = np.asarray(sae.W_skip, np.float64) if sae.skip else None
    if sae.normalization == "expected_norm":
        s_in, s_out = float(np.asarray(sae.norm_stats["scale"])), float(np.asarray(sae.target_norm_stats["scale"]))
        W_enc, W_dec, b_dec = W_enc * s_in, W_dec / s_out, b_dec / s_out
        W_skip = None if W_skip is None else W_skip * (s_in / s_out)
    elif sae.normalization != "none":
        raise SAEError(f"a {sae.normalization!r} transcoder cannot be written for other libraries: export "
                       "transcoders trained with normalization 'none' or 'expected_norm'")
    return W_enc, b_enc, W_dec, b_dec, W_skip
