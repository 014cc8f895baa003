"""Where a model keeps its layers, embeddings, final norm and unembedding, per mlx-lm family."""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from .errors import TraceError
from .hookpoint import COMPONENT_ALIASES as COMPONENT_NAMES
from .hookpoint import HookPoint, canonical_component

LAYER_LIST_NAMES = ("layers", "h", "blocks")
EMBED_NAMES = ("embed_tokens", "wte", "embed_in")
NORM_NAMES = ("norm", "ln_f", "final_layer_norm", "final_layernorm", "final_norm")
UNEMBED_NAMES = ("lm_head", "embed_out")
ATTN_NAMES = ("self_attn", "attn", "attention")
MLP_NAMES = ("mlp", "feed_forward", "ffn")



@dataclass(frozen=True)
class Anatomy:
    """Module paths (dot-separated, relative to the mlx-lm `Model`) of a model's parts.

    `unembed_path` is None when the unembedding is tied to the embedding (`embed.as_linear`).
    `logit_softcap` is Gemma-2's final tanh soft-capping, or None.
    """

    layers_path: str
    n_layers: int
    embed_path: str
    norm_path: str
    unembed_path: str | None
    attn_name: str
    mlp_name: str
    logit_softcap: float | None = None

    def layer_path(self, layer: int) -> str:
        return f"{self.layers_path}.{layer}"

    def hook_point(self, layer: int, component: str = "output") -> HookPoint:
        """The HookPoint of `component` ("mlp", "attn", "output"/"resid", "mlp_in") of block `layer`.

        Negative layers count from the end, as in Python.
        """
        layer = self.check_layer(layer)
        kind = canonical_component(component)
        base = self.layer_path(layer)
        if kind == "output":
            return HookPoint(layer, kind, base)
        return HookPoint(layer, kind, f"{base}.{self.attn_name if kind == 'attn' else self.mlp_name}")

    def parse_hook_point(self, name: str, layer: int | None = None) -> HookPoint:
        """A HookPoint from what a user types: a component ("mlp", "attn", "resid", "output")
        with `layer`, or a module path ("model.layers.3.mlp", "model.layers.3")."""
        if not isinstance(name, str) or not name:
            raise TraceError(f"a hook point is a component name or a module path, got {name!r}")
        if name.lower() in COMPONENT_NAMES:
            if layer is None:
                raise TraceError(f"component {name!r} needs a layer: pass layer=...")
            return self.hook_point(layer, name)
        found = self.layer_of(name)
        if found is not None:
            for kind in ("output", "mlp", "attn"):
                point = self.hook_point(found, kind)
                if point.path == name:
                    if layer is not None and self.check_layer(layer) != found:
                        raise TraceError(f"{name!r} lies in layer {found}, not layer {layer}")
                    return point
        raise TraceError(
            f"{name!r} is not a hook point: use 'mlp', 'attn' or 'output' (also 'resid') with a "
            f"layer, or a block's path such as {self.hook_point(0, 'mlp').path!r}"
        )

    def match_hook_points(self, patterns: str | list[str]) -> list[HookPoint]:
        """The hook points whose name ("layers.3.mlp") or path ("model.layers.3.mlp") matches one of
        `patterns` (shell-style: "layers.*.mlp", "layers.1?.output"), in layer order, each once."""
        patterns = [patterns] if isinstance(patterns, str) else list(patterns)
        every = [self.hook_point(i, c) for i in range(self.n_layers) for c in ("output", "mlp", "attn", "mlp_in")]
        found: list[HookPoint] = []
        for pattern in patterns:
            if not isinstance(pattern, str) or not pattern:
                raise TraceError(f"a hook point pattern is a string such as 'layers.*.mlp', got {pattern!r}")
            hits = [p for p in every if fnmatch.fnmatchcase(p.name, pattern) or
                    (p.port == "output" and fnmatch.fnmatchcase(p.path, pattern))]
            if not hits:
                raise TraceError(
                    f"no hook point matches {pattern!r}: this model has layers.<0..{self.n_layers - 1}>.<output|mlp|"
                    f"attn|mlp_in> (paths {self.hook_point(0, 'mlp').path!r}, ...), e.g. 'layers.*.mlp', "
                    f"'layers.{self.n_layers // 2}.output', 'layers.1?.mlp'")
            found.extend(p for p in hits if p not in found)
        return sorted(found, key=lambda p: (p.layer, ("output", "mlp", "attn", "mlp_in").index(p.component)))

    def check_layer(self, layer: int) -> int:
        """Return `layer` as a non-negative index, or raise a TraceError saying the valid range."""
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise TraceError(f"layer must be an int, got {layer!r}")
        if not -self.n_layers <= layer < self.n_layers:
            raise TraceError(
                f"layer {layer} is out of range: this model has {self.n_layers} layers "
                f"(valid: 0..{self.n_layers - 1}, or -1 for the last)"
            )
        return layer % self.n_layers

    def layer_of(self, path: str) -> int | None:
        """The block index a module path lies in, or None if it lies outside the blocks."""
        prefix = self.layers_path + "."
        if not path.startswith(prefix):
            return None
        return int(path[len(prefix) :].split(".")[0])


def get_module(root: nn.Module, path: str):
    """The module (or list) at dot-separated `path` under `root`; "" is `root` itself."""
    current = root
    for part in path.split(".") if path else []:
        if isinstance(current, (list, tuple)) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        elif isinstance(current, dict) and part in current:
            current = current[part]
        else:
            raise TraceError(unknown_path_message(root, path))
    return current


def module_names(root: nn.Module) -> list[str]:
    """Every module path under `root`, in the order mlx's `named_modules` gives, root excluded."""
    return [name for name, _ in reversed(root.named_modules()) if name]


def unknown_path_message(root: nn.Module, path: str) -> str:
    names = module_names(root)
    close = difflib.get_close_matches(path, names, n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return (
        f"no module at path {path!r}.{hint} "
        "`model.module_names()` lists every path."
    )


def _child_named(module: nn.Module, candidates: tuple[str, ...]) -> str | None:
    return next((n for n in candidates if isinstance(module, dict) and n in module), None)


def _find_layer_list(model: nn.Module) -> tuple[str, list]:
    layers = getattr(model, "layers", None)
    if isinstance(layers, list) and layers:
        for name, child in model.named_modules():
            for attr in LAYER_LIST_NAMES:
                if isinstance(child, dict) and child.get(attr) is layers:
                    return (f"{name}.{attr}" if name else attr), layers
    for name, child in model.named_modules():
        attr = _child_named(child, LAYER_LIST_NAMES)
        if attr and isinstance(child[attr], list) and child[attr]:
            return (f"{name}.{attr}" if name else attr), child[attr]
    raise TraceError(
        f"cannot find the transformer blocks of {type(model).__name__}: expected a list named "
        f"one of {LAYER_LIST_NAMES}. Supported families: llama, mistral, qwen2, qwen3, gemma, "
        "gemma2, gemma3, phi3, olmo2, gpt2, gpt_neox."
    )


def resolve_anatomy(model: nn.Module) -> Anatomy:
    """Find the paths of a model's blocks, embedding, final norm and unembedding."""
    layers_path, layers = _find_layer_list(model)
    parent_path = layers_path.rsplit(".", 1)[0] if "." in layers_path else ""
    parent = get_module(model, parent_path)

    def under_parent(name: str | None) -> str | None:
        if name is None:
            return None
        return f"{parent_path}.{name}" if parent_path else name

    embed = under_parent(_child_named(parent, EMBED_NAMES))
    norm = under_parent(_child_named(parent, NORM_NAMES))
    if embed is None or norm is None:
        raise TraceError(
            f"cannot find the embedding or final norm beside {layers_path!r} in "
            f"{type(model).__name__}"
        )
    unembed = _find_unembed(model, parent_path, parent)
    block = layers[0]
    attn = _child_named(block, ATTN_NAMES)
    mlp = _child_named(block, MLP_NAMES)
    if attn is None or mlp is None:
        raise TraceError(
            f"cannot find attention/MLP inside the blocks of {type(model).__name__}: "
            f"expected children named one of {ATTN_NAMES} and {MLP_NAMES}"
        )
    softcap = _find_softcap(model)
    return Anatomy(layers_path, len(layers), embed, norm, unembed, attn, mlp, softcap)


def _find_unembed(model: nn.Module, parent_path: str, parent: nn.Module) -> str | None:
    outer = model
    prefix = ""
    # A multimodal wrapper (gemma3) keeps the text model one level down: look beside `parent`'s owner.
    owner_path = parent_path.rsplit(".", 1)[0] if "." in parent_path else ""
    if owner_path:
        outer, prefix = get_module(model, owner_path), owner_path + "."
    if getattr(outer, "tie_word_embeddings", False) is True:
        return None
    for holder, holder_prefix in ((outer, prefix), (parent, f"{parent_path}." if parent_path else "")):
        name = _child_named(holder, UNEMBED_NAMES)
        if name:
            return holder_prefix + name
    return None


def _find_softcap(model: nn.Module) -> float | None:
    for _, child in model.named_modules():
        cap = child.__dict__.get("final_logit_softcapping") if hasattr(child, "__dict__") else None
        if cap:
            return float(cap)
    args = getattr(model, "args", None)
    cap = getattr(args, "final_logit_softcapping", None)
    return float(cap) if cap else None


def unembed(model: nn.Module, anatomy: Anatomy, hidden: mx.array) -> mx.array:
    """Logits from final-norm outputs `hidden` (..., d_model) -> (..., vocab)."""
    if anatomy.unembed_path is None:
        logits = get_module(model, anatomy.embed_path).as_linear(hidden)
    else:
        logits = get_module(model, anatomy.unembed_path)(hidden)
    if anatomy.logit_softcap:
        logits = mx.tanh(logits / anatomy.logit_softcap) * anatomy.logit_softcap
    return logits
