"""Attribution patching (Nanda 2023; Syed et al. 2023): activation patching estimated from
gradients, for every layer x position x component and every attention head at once.

Patching the clean value `c` of an activation into the corrupted run (value `x`) changes the
metric by about `(c - x) . d metric / dx`, the gradient taken in the corrupted run. One clean
forward, one corrupted forward and one backward give that for every hook point; the result is
in `activation_patching`'s units (`PatchingResult.recovery`), so the two compare directly.
Integrated gradients (`method="ig"`) average the gradient along the straight line from `x` to
`c` instead, one batched forward and backward per hook point, where the linear estimate is poor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import mlx.core as mx
import numpy as np

from .anatomy import get_module
from .envoy import Port
from .errors import TraceError
from .hookpoint import canonical_component
from .patching import Metric, PatchingResult, paired_tokens, token_log_prob

if TYPE_CHECKING:
    from .model import InterpretableModel

OUTPUT_PROJECTIONS = ("o_proj", "c_proj", "dense", "out_proj")
HEAD_COUNTS = ("n_heads", "num_heads", "num_attention_heads", "n_head")


@dataclass
class AttributionResult:
    """Estimated activation patching: `components["output" | "attn" | "mlp"]` is a
    `PatchingResult` with `recovery` (n_layers, seq), as `activation_patching(...,
    per_position=True)` gives exactly; `heads` is the recovery per (layer, head, position)."""

    method: str
    layers: list[int]
    components: dict[str, PatchingResult]
    heads: np.ndarray | None

    def correlation(self, exact: PatchingResult) -> float:
        """Pearson r between this estimate and real activation patching of the same component."""
        estimate = self.components[canonical_component(exact.component)].recovery
        if estimate.shape != exact.recovery.shape:
            raise TraceError(
                f"the estimate has shape {estimate.shape} and the patching result {exact.recovery.shape}: "
                "run activation_patching with per_position=True on the same prompts and layers"
            )
        return float(np.corrcoef(estimate.reshape(-1), exact.recovery.reshape(-1))[0, 1])


def attribution_patching(
    model: "InterpretableModel",
    clean: str | Sequence[str],
    corrupted: str | Sequence[str],
    metric: Metric | None = None,
    components: Sequence[str] = ("output", "attn", "mlp"),
    heads: bool = True,
    layers: Sequence[int] | None = None,
    method: str = "linear",
    steps: int = 8,
) -> AttributionResult:
    """Estimate the recovery of patching each (layer, position) of each component, and each
    attention head, from the clean prompts into the corrupted ones.

    Prompts pair up as in `activation_patching` (same token count; a list is patched all at
    once). `metric(logits)` returns a scalar array (e.g. `logit_difference(model, " Mary",
    " John")`); the default is the log-probability of the clean run's predicted last token.
    `method`: "linear" (one backward) or "ig" (integrated gradients with `steps` points).
    """
    if method not in ("linear", "ig"):
        raise TraceError(f"method must be 'linear' or 'ig', got {method!r}")
    if method == "ig" and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise TraceError(f"steps must be a positive int (points on the integration path), got {steps!r}")
    layers = list(range(model.n_layers)) if layers is None else [model.anatomy.check_layer(l) for l in layers]
    kinds = list(dict.fromkeys(canonical_component(c) for c in components))
    points = {(c, l): (model.hook_point(l, c).path, "output") for c in kinds for l in layers}
    if heads:
        points.update({("heads", l): (head_input(model, l)[0], "input") for l in layers})
    clean_ids, corrupted_ids = paired_tokens(model, clean, corrupted)

    clean_values, clean_logits = _values(model, clean_ids, points.values())
    if metric is None:
        metric = token_log_prob(mx.argmax(clean_logits[:, -1], axis=-1).tolist())
    clean_metric = float(metric(clean_logits))
    with model.trace(corrupted_ids) as trace:
        saved = {key: Port(model, *key).save() for key in points.values()}
        grads = {key: Port(model, *key).grad.save() for key in points.values()} if method == "linear" else {}
        logits = model.output.save()
        corrupted_value = trace.metric(lambda: metric(logits.value))
    corrupted_metric = float(corrupted_value.value)
    denominator = clean_metric - corrupted_metric
    if abs(denominator) < 1e-8:
        raise TraceError(
            "the metric is the same on the clean and corrupted prompts, so recovery is undefined: "
            "choose prompts (or a metric, e.g. logit_difference) that tell them apart"
        )

    effects = {}
    for name, key in points.items():
        delta = clean_values[key] - saved[key].value
        grad = grads[key].value if method == "linear" else _mean_ig_gradient(
            model, corrupted_ids, key, saved[key].value, delta, metric, steps)
        effects[name] = delta * grad
    results = {}
    for kind in kinds:
        effect = np.stack([np.array(effects[(kind, l)].sum(axis=(0, 2))) for l in layers])
        results[kind] = PatchingResult(kind, clean_metric, corrupted_metric, corrupted_metric + effect,
                                       effect / denominator)
    head_recovery = None
    if heads:
        per_head = [_per_head(effects[("heads", l)], head_input(model, l)[1]) for l in layers]
        head_recovery = np.stack(per_head) / denominator
    return AttributionResult(method, layers, results, head_recovery)


def head_input(model: "InterpretableModel", layer: int) -> tuple[str, int]:
    """The path of layer `layer`'s attention output projection, whose input is the heads'
    outputs side by side (n_heads * head_dim), and the number of heads."""
    attn_path = model.hook_point(layer, "attn").path
    attn = get_module(model.model, attn_path)
    name = next((n for n in OUTPUT_PROJECTIONS if isinstance(attn, dict) and n in attn), None)
    count = next((getattr(attn, n) for n in HEAD_COUNTS if isinstance(getattr(attn, n, None), int)), None)
    if name is None or count is None:
        raise TraceError(
            f"cannot split {attn_path} ({type(attn).__name__}) into heads: expected an output "
            f"projection named one of {OUTPUT_PROJECTIONS} and a head count attribute "
            f"({', '.join(HEAD_COUNTS)}); pass heads=False"
        )
    return f"{attn_path}.{name}", count


def _values(model: "InterpretableModel", ids: mx.array, keys) -> tuple[dict, mx.array]:
    with model.trace(ids):
        saved = {key: Port(model, *key).save() for key in keys}
        logits = model.output.save()
    return {key: value.value for key, value in saved.items()}, logits.value


def _mean_ig_gradient(model, corrupted_ids, key, start: mx.array, delta: mx.array, metric: Metric,
                      steps: int) -> mx.array:
    """The gradient at `key` averaged over the points start + alpha * delta (midpoint rule),
    all `steps` of them in one batched forward and backward."""
    batch = corrupted_ids.shape[0]
    alphas = (mx.arange(steps, dtype=mx.float32) + 0.5) / steps
    path_values = start[None] + alphas.reshape(-1, *([1] * delta.ndim)) * delta[None]
    path_values = path_values.reshape(steps * batch, *delta.shape[1:]).astype(start.dtype)
    with model.trace(mx.tile(corrupted_ids, (steps, 1))) as trace:
        port = Port(model, *key)
        port.set(path_values)
        grad = port.grad.save()
        logits = model.output.save()
        # One metric per point, summed: each point's gradient is its own metric's.
        trace.metric(lambda: sum(metric(part) for part in mx.split(logits.value, steps, axis=0)))
    return grad.value.reshape(steps, *delta.shape).mean(axis=0)


def _per_head(effect: mx.array, n_heads: int) -> np.ndarray:
    """(batch, seq, n_heads * head_dim) -> (n_heads, seq), summed over batch and head_dim."""
    batch, seq, width = effect.shape
    return np.array(effect.reshape(batch, seq, n_heads, width // n_heads).sum(axis=(0, 3))).T
