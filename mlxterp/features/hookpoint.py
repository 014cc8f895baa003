"""Where an SAE reads its activations in a model, and checks that an SAE fits a model.

An SAE's `metadata` names the `layer`, `component` and `model_name` it was trained on; the
hook point is `model.activation_path(layer, component)`. Functions that take `model=None` use
the model the SAE is attached to: `sae.attached_model`, set by `model.train_sae` and
`model.load_sae`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

import numpy as np

from ..errors import SAEError

if TYPE_CHECKING:
    from ..model import InterpretableModel
    from ..sae.model import SAE


def resolve_model(sae: "SAE", model: "InterpretableModel | None") -> "InterpretableModel":
    """`model`, or the model `sae` is attached to when `model` is None."""
    if model is not None:
        return model
    attached = getattr(sae, "attached_model", None)
    if attached is None:
        raise SAEError(
            "this SAE is not attached to a model (it was not trained or loaded through an "
            "InterpretableModel): pass model=..., e.g. get_top_activating_texts(sae, 12, texts, "
            "model=model), or load it with model.load_sae(path)"
        )
    return attached


def sae_layer(sae: "SAE") -> tuple[int, str]:
    """The (layer, component) of `sae.metadata`, or an SAEError naming what is missing."""
    metadata = getattr(sae, "metadata", None) or {}
    missing = [key for key in ("layer", "component") if metadata.get(key) is None]
    if missing:
        raise SAEError(
            f"the SAE's metadata has no {' or '.join(repr(m) for m in missing)}: set "
            "sae.metadata['layer'] and sae.metadata['component'] ('mlp', 'attn' or 'output') "
            "to the hook point it was trained on"
        )
    return int(metadata["layer"]), str(metadata["component"])


def hook_point(sae: "SAE", model: "InterpretableModel", layer: int | None = None) -> str:
    """Module path whose output the SAE encodes, after checking that the SAE fits `model`.

    `layer`, when given, must be the SAE's own layer (negative counts from the end).
    """
    check_model(sae, model)
    own_layer, component = sae_layer(sae)
    own_layer = model.anatomy.check_layer(own_layer)
    if layer is not None and model.anatomy.check_layer(layer) != own_layer:
        raise SAEError(
            f"this SAE was trained on layer {own_layer} ({component}), not layer {layer}: "
            f"pass layer={own_layer} (or leave layer out), or use an SAE trained on layer {layer}"
        )
    return model.activation_path(own_layer, component)


def check_model(sae: "SAE", model: "InterpretableModel") -> None:
    """Raise an SAEError when `sae` was trained on another model (name or d_model differ)."""
    if int(sae.d_model) != model.d_model:
        raise SAEError(
            f"the SAE reads {sae.d_model}-dimensional activations but {model.name} has "
            f"d_model {model.d_model}: use an SAE trained on this model"
        )
    trained_on = (getattr(sae, "metadata", None) or {}).get("model_name")
    if trained_on and _short_name(trained_on) != _short_name(model.name):
        raise SAEError(
            f"this SAE was trained on {trained_on!r}, not on {model.name!r}: use an SAE trained "
            "on this model, or, if it is the same model under another name, set "
            f"sae.metadata['model_name'] = {model.name!r}"
        )


def check_features(sae: "SAE", feature_indices: int | Iterable[int]) -> np.ndarray:
    """Feature indices as an int64 array (1-D), or an SAEError naming the valid range."""
    indices = np.atleast_1d(np.asarray(feature_indices))
    if indices.size == 0:
        raise SAEError("no feature index given: pass at least one feature index")
    if not np.issubdtype(indices.dtype, np.integer) or indices.ndim != 1:
        raise SAEError(f"feature indices must be ints, got {feature_indices!r}")
    bad = indices[(indices < 0) | (indices >= sae.d_hidden)]
    if bad.size:
        raise SAEError(
            f"feature {int(bad[0])} does not exist: this SAE has {sae.d_hidden} features "
            f"(valid indices 0..{sae.d_hidden - 1})"
        )
    return indices.astype(np.int64)


def check_feature(sae: "SAE", feature_idx: int) -> int:
    """One feature index as an int, or an SAEError naming the valid range."""
    if np.ndim(feature_idx) != 0:
        raise SAEError(f"feature_idx must be one int, got {feature_idx!r}: pass feature_indices for several")
    return int(check_features(sae, feature_idx)[0])


def _short_name(name: str) -> str:
    """'mlx-community/SmolLM2-135M-Instruct' and 'SmolLM2-135M-Instruct' name the same model."""
    return name.rstrip("/").rsplit("/", 1)[-1].lower()
