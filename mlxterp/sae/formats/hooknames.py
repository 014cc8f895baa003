"""Hook names of other libraries -> (layer, component), and back. Tables are data; one function reads each.

HOOK_NAME_PATTERNS: regex, component, layer offset (the HookPoint layer is the captured number
plus the offset: TransformerLens' resid_pre of block L is block L-1's output).
UNSUPPORTED_HOOK_PATTERNS: names that are recognised but read activations mlxterp has no hook for.
"""

from __future__ import annotations

import re

from ...errors import SAEError

HOOK_NAME_PATTERNS: tuple[tuple[str, str, int], ...] = (
    # TransformerLens (SAELens)
    (r"blocks\.(\d+)\.hook_resid_post", "output", 0),
    (r"blocks\.(\d+)\.hook_resid_pre", "output", -1),
    (r"blocks\.(\d+)\.hook_mlp_out", "mlp", 0),
    (r"blocks\.(\d+)\.hook_attn_out", "attn", 0),
    # sparsify / Hugging Face module paths ("model." and "gpt_neox." prefixes allowed)
    (r"(?:model\.|gpt_neox\.)?layers\.(\d+)", "output", 0),
    (r"(?:model\.|gpt_neox\.)?layers\.(\d+)\.mlp", "mlp", 0),
    (r"(?:model\.|gpt_neox\.)?layers\.(\d+)\.self_attn", "attn", 0),
    (r"(?:model\.|gpt_neox\.)?layers\.(\d+)\.attention", "attn", 0),
)

UNSUPPORTED_HOOK_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"blocks\.\d+\.attn\.hook_z", "the concatenated attention heads before the output projection"),
    (r"blocks\.\d+\.hook_resid_mid", "the residual stream between attention and MLP"),
    (r"blocks\.\d+\.mlp\.hook_(pre|post)", "the MLP's hidden layer"),
    (r"blocks\.\d+\.ln\d+\.hook_normalized", "a layer norm's output"),
)

# Writing: component -> TransformerLens / sparsify name of layer L's hook.
SAELENS_HOOK_NAMES = {"output": "blocks.{layer}.hook_resid_post", "mlp": "blocks.{layer}.hook_mlp_out",
                      "attn": "blocks.{layer}.hook_attn_out"}
SPARSIFY_HOOK_NAMES = {"output": "layers.{layer}", "mlp": "layers.{layer}.mlp", "attn": "layers.{layer}.self_attn"}

SUPPORTED_HINT = ("blocks.L.hook_resid_post, blocks.L.hook_resid_pre (L >= 1), blocks.L.hook_mlp_out, "
                  "blocks.L.hook_attn_out, layers.L, layers.L.mlp, layers.L.self_attn")


def parse_hook_name(name: str) -> tuple[int, str]:
    """(layer, component) of a TransformerLens hook name or a module path; SAEError if it has none."""
    for pattern, component, offset in HOOK_NAME_PATTERNS:
        match = re.fullmatch(pattern, name)
        if match:
            layer = int(match.group(1)) + offset
            if layer < 0:
                raise SAEError(
                    f"hook {name!r} reads the embeddings (the residual stream before block 0), which "
                    "mlxterp has no hook point for: use an SAE trained on a block's output"
                )
            return layer, component
    for pattern, what in UNSUPPORTED_HOOK_PATTERNS:
        if re.fullmatch(pattern, name):
            raise SAEError(f"hook {name!r} reads {what}, which mlxterp has no hook point for: "
                           f"mlxterp reads {SUPPORTED_HINT}")
    raise SAEError(f"unknown hook name {name!r}: mlxterp understands {SUPPORTED_HINT}; pass layer= and "
                   "component= to say where the SAE reads")


def hook_name(table: dict[str, str], layer: int, component: str) -> str:
    """The name `table` (SAELENS_HOOK_NAMES or SPARSIFY_HOOK_NAMES) gives layer `layer`'s `component`."""
    return table[component].format(layer=layer)
