"""HookPoint: the one name for where activations are read in a model (layer, component, module path)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import TraceError

COMPONENTS = ("mlp", "attn", "output", "mlp_in")
COMPONENT_ALIASES = {
    "mlp": "mlp",
    "attn": "attn",
    "attention": "attn",
    "self_attn": "attn",
    "output": "output",
    "resid": "output",
    "residual": "output",
    "block": "output",
    "mlp_in": "mlp_in",
    "mlp_input": "mlp_in",
}


def canonical_component(component: str) -> str:
    """Map a friendly component name to "mlp", "attn" or "output"; raise on unknown names."""
    kind = COMPONENT_ALIASES.get(str(component).lower())
    if kind is None:
        raise TraceError(
            f"unknown component {component!r}: use 'mlp', 'attn', 'output' (also 'resid') or 'mlp_in', "
            "or a module path such as 'model.layers.3.mlp'"
        )
    return kind


@dataclass(frozen=True)
class HookPoint:
    """Where activations are read: block `layer`'s `component` ("mlp", "attn" or "output", the
    residual stream after the block, or "mlp_in", the MLP's input after its norm, which
    transcoders read), at mlx-lm module `path` (e.g. "model.layers.3.mlp") and `port`.

    Build one from a model with `model.hook_point(layer, component)`, which resolves the path.
    """

    layer: int
    component: str
    path: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "component", canonical_component(self.component))

    @property
    def port(self) -> str:
        """Which side of the module at `path` holds the activations: "input" for "mlp_in", else "output"."""
        return "input" if self.component == "mlp_in" else "output"

    @property
    def name(self) -> str:
        """The name patterns match, e.g. "layers.3.mlp" ("layers.*.mlp" in `model.train_saes`)."""
        return f"layers.{self.layer}.{self.component}"

    @property
    def label(self) -> str:
        """A short display name, e.g. "layer 3 mlp"."""
        return f"layer {self.layer} {self.component}"

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "component": self.component, "path": self.path}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "HookPoint":
        return cls(int(data["layer"]), str(data["component"]), str(data["path"]))

    def __str__(self) -> str:
        return self.path
