"""Does an SAE fit a model, a hook point, these feature indices? The one place that decides.

A model is identified by what it is, not by its display name: an SAE trained through mlxterp
stores the model's `fingerprint` (architecture, dimensions and a hash of some embedding rows),
and any model with the same fingerprint is the same model, whatever it was loaded as. SAE files
from before fingerprints fall back to comparing names. Functions that take `model=None` use the
model the SAE is attached to (`sae.attached_model`, set by `model.train_sae` / `model.load_sae`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

from ..errors import SAEError
from ..hookpoint import HookPoint, canonical_component

if TYPE_CHECKING:
    from ..model import InterpretableModel
    from .model import SAE


def compatibility_problems(sae: "SAE", model: Any, layer: int | None = None,
                           component: str | None = None) -> list[str]:
    """What keeps `sae` from reading `model` (at `layer`/`component` when given); [] if nothing."""
    meta = sae.metadata
    problems = []
    d_model = getattr(model, "d_model", None)
    if d_model is not None and int(d_model) != sae.d_model:
        problems.append(f"it reads {sae.d_model}-dimensional activations but the model has d_model {d_model}")
    name = getattr(model, "name", None)
    theirs, ours = meta.get("model_fingerprint"), getattr(model, "fingerprint", None)
    if theirs and ours:
        if theirs != ours:
            problems.append(f"it was trained on another model ({meta.get('model_name')!r}, fingerprint "
                            f"{theirs}; this is {name!r}, fingerprint {ours})")
    elif meta.get("model_name") and name and _short_name(meta["model_name"]) != _short_name(name):
        problems.append(f"it was trained on {meta['model_name']!r}, not on {name!r}")
    own = sae.hook_point
    if layer is not None:
        if own is None:
            problems.append("its metadata names no layer")
        else:
            n_layers = getattr(model, "n_layers", None)
            want = int(layer) % n_layers if isinstance(n_layers, int) and n_layers > 0 else int(layer)
            if want != own.layer:
                problems.append(f"it was trained on layer {own.layer}, not layer {layer}")
    if component is not None:
        if own is None:
            problems.append("its metadata names no component")
        elif canonical_component(component) != own.component:
            problems.append(f"it was trained on component {own.component!r}, not {component!r}")
    return problems


def check_compatible(sae: "SAE", model: Any, layer: int | None = None, component: str | None = None,
                     strict: bool = True, where: str = "this SAE") -> None:
    """Raise an SAEError listing what keeps `sae` from `model`; a wrong width always raises,
    other problems only when `strict`."""
    problems = compatibility_problems(sae, model, layer, component)
    if not problems:
        return
    wrong_width = getattr(model, "d_model", sae.d_model) != sae.d_model
    if strict or wrong_width:
        fix = ("use an SAE trained on this model and hook point" if wrong_width else
               "use the SAE that matches, or, if it is the same model under another name, load it "
               "with strict=False (model.load_sae(path, strict=False))")
        raise SAEError(f"{where} does not fit {getattr(model, 'name', 'this model')!r}: "
                       f"{'; '.join(problems)}: {fix}")


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


def sae_hook_point(sae: "SAE", model: "InterpretableModel", layer: int | None = None) -> HookPoint:
    """The HookPoint on `model` whose output `sae` encodes, after checking that `sae` fits `model`.

    `layer`, when given, must be the SAE's own layer (negative counts from the end).
    """
    own = sae.hook_point
    if own is None:
        raise SAEError(
            "the SAE's metadata names no hook point: set sae.hook_point = model.hook_point(layer, "
            "component) to the layer and component ('mlp', 'attn' or 'output') it was trained on"
        )
    check_compatible(sae, model, where="this SAE")
    point = model.hook_point(own.layer, own.component)
    if layer is not None and model.anatomy.check_layer(layer) != point.layer:
        raise SAEError(
            f"this SAE was trained on layer {point.layer} ({point.component}), not layer {layer}: "
            f"pass layer={point.layer} (or leave layer out), or use an SAE trained on layer {layer}"
        )
    return point


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
