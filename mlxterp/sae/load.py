"""load_sae: an SAE from an mlxterp file or a foreign folder (SAELens, sparsify, Gemma Scope),
checked against a model when one is given."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import SAEError
from ..hookpoint import HookPoint, canonical_component
from .checks import check_compatible
from .formats import foreign_folder, read_folder
from .model import SAE


def load_sae(path: str | os.PathLike, model: Any = None, layer: int | None = None,
             component: str | None = None, strict: bool = True, hookpoint: str | None = None) -> SAE:
    """Load the SAE saved at `path`; with `model`, check it fits and attach it to the model.

    `path`: an mlxterp SAE file, or a folder of SAELens, sparsify or Gemma Scope (docs/interop.md);
    a sparsify run directory needs `hookpoint` (e.g. "layers.6"). An SAE whose files name no hook
    point reads at `layer`/`component` (both needed). A different activation width is always an
    error; with `strict`, so is another model, or a `layer`/`component` other than the SAE's (pass
    strict=False to load it anyway). The attached model is what feature functions use when called
    without `model=`.
    """
    path = Path(path)
    if not path.exists():
        raise SAEError(f"no SAE at {path}: check the path")
    folder = foreign_folder(path)
    if folder is None:
        if hookpoint is not None:
            raise SAEError(f"hookpoint={hookpoint!r} chooses an SAE of a sparsify run; {path} is one mlxterp SAE")
        sae = SAE.load(path)
    else:
        spec, tensors, metadata = read_folder(folder, hookpoint)
        sae = SAE.from_parts(spec, tensors, folder)
        sae.metadata = metadata
        if sae.hook_point is None and layer is not None and component is not None:
            sae.hook_point = HookPoint(int(layer), canonical_component(component), "")
    where = f"the SAE at {path}" + (f" ({hookpoint})" if hookpoint else "")
    if model is not None:
        check_compatible(sae, model, layer, component, strict, where=where)
        own = sae.hook_point
        if own is not None and folder is not None:
            if own.layer >= model.n_layers:
                raise SAEError(f"{where} reads layer {own.layer}, but {model.name!r} has {model.n_layers} layers: "
                               "use an SAE made for this model")
            sae.hook_point = model.hook_point(own.layer, own.component)
        sae.attached_model = model
    return sae
