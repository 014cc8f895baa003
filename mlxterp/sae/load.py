"""load_sae: an SAE from an mlxterp file or a foreign folder (SAELens, sparsify, Gemma Scope),
checked against a model when one is given."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..anatomy import get_module
from ..errors import SAEError
from ..hookpoint import HookPoint, canonical_component
from .checks import check_compatible
from .formats import foreign_folder, read_folder
from .formats.hub import fetch, is_hub_name
from .model import SAE


def load_sae(path: str | os.PathLike, model: Any = None, layer: int | None = None,
             component: str | None = None, strict: bool = True, hookpoint: str | None = None,
             sae_id: str | None = None, subfolder: str | None = None) -> SAE:
    """Load the SAE saved at `path`; with `model`, check it fits and attach it to the model.

    `path`: an mlxterp SAE file, or a folder of SAELens, sparsify or Gemma Scope (docs/interop.md);
    a sparsify run directory needs `hookpoint` (e.g. "layers.6"). An SAE whose files name no hook
    point reads at `layer`/`component` (both needed). A different activation width is always an
    error; with `strict`, so is another model, or a `layer`/`component` other than the SAE's (pass
    strict=False to load it anyway). The attached model is what feature functions use when called
    without `model=`.

    Not a local path: a hub release and its SAE id, `load_sae("gemma-scope-2b-pt-res-canonical",
    "layer_12/width_16k/canonical")` (a string in `model`'s place is the SAE id), or a hub
    repository and the folder in it, `load_sae("org/repo", subfolder="layers.6")`.
    """
    if isinstance(model, str):
        model, sae_id = None, model
    source = None
    if not Path(path).exists() and is_hub_name(str(path)):
        path, source = fetch(str(path), sae_id, subfolder)
    path = Path(path)
    folder = foreign_folder(path)
    if folder is None:
        if hookpoint is not None:
            raise SAEError(f"hookpoint={hookpoint!r} chooses an SAE of a sparsify run; {path} is one mlxterp SAE")
        sae = SAE.load(path)
    else:
        spec, tensors, metadata = read_folder(folder, hookpoint)
        sae = SAE.from_parts(spec, tensors, folder)
        if source:
            metadata["source"] = {**metadata["source"], **{k: v for k, v in source.items() if v}}
        sae.metadata = metadata
        if sae.hook_point is None and layer is not None and component is not None:
            sae.hook_point = HookPoint(int(layer), canonical_component(component), "")
    where = f"the SAE at {path}" + (f" ({hookpoint})" if hookpoint else "")
    if model is None and (layer is not None or component is not None):
        check_compatible(sae, None, layer, component, strict, where=where)  # the hook point alone
    if model is not None:
        check_compatible(sae, model, layer, component, strict, where=where)
        own = sae.hook_point
        if own is not None and folder is not None:
            if own.layer >= model.n_layers:
                raise SAEError(f"{where} reads layer {own.layer}, but {model.name!r} has {model.n_layers} layers: "
                               "use an SAE made for this model")
            sae.hook_point = model.hook_point(own.layer, own.component)
            if strict:
                _check_sublayer_norms(sae, model, where)
        sae.attached_model = model
    return sae


def _check_sublayer_norms(sae: SAE, model: Any, where: str) -> None:
    # TransformerLens' hook_mlp_out / hook_attn_out (SAELens, Gemma Scope) come after the norms
    # that Gemma-2/3 and OLMo-2 apply to each sublayer's output; mlxterp's "mlp"/"attn" hook points
    # are the modules' outputs, before those norms. Same width, different activations.
    point, source = sae.hook_point, sae.metadata.get("source") or {}
    if point.component == "output" or source.get("format") not in ("saelens", "gemma-scope"):
        return
    block = get_module(model.model, model.anatomy.layer_path(point.layer))
    if hasattr(block, "post_feedforward_layernorm"):
        raise SAEError(
            f"{where} reads the {point.component} output after the post-sublayer norm of {model.name!r} (as "
            f"TransformerLens does), but mlxterp's {point.component!r} hook point is before that norm, so "
            "it would encode other activations: use a residual-stream SAE, or pass strict=False if you "
            "know the SAE was trained before the norm"
        )
