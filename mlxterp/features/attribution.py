"""Feature attribution (Marks et al. 2024, "Sparse Feature Circuits"): how much each SAE
feature, at each position, carries a metric of the model's output.

The SAEs are spliced with their error term, so the model computes exactly what it computes
without them, and the codes are nodes of the graph. A feature's attribution is the metric's
estimated drop if its code there were zero: code x gradient (`method="linear"`, one forward
and backward for every spliced SAE at once), or code x the gradient averaged along the codes
scaled from 0 to their values, the error term held (`method="ig"`: integrated gradients, one
batched forward and backward per SAE; per SAE they sum to the metric minus the metric with all
its codes zeroed). `ablation_check` tests the ranking by ablating the top features.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import mlx.core as mx
import numpy as np

from ..errors import SAEError
from ..hookpoint import HookPoint
from ..tracing import Positions
from .interventions import ablate, splice_sae
from ..sae.checks import check_features, resolve_model, sae_hook_point

if TYPE_CHECKING:
    from ..model import InterpretableModel
    from ..sae.model import SAE

Metric = Callable[[mx.array], mx.array]  # logits (batch, seq, vocab) -> a scalar array


@dataclass
class FeatureAttribution:
    """One SAE's attribution: `attribution` and `codes` are (batch, seq, d_hidden) arrays (0 where
    the SAE is not spliced); `metric` is the metric of the unedited run."""

    hook_point: HookPoint
    method: str
    metric: float
    codes: np.ndarray
    attribution: np.ndarray

    def per_feature(self) -> np.ndarray:
        """(d_hidden,) attribution summed over the batch and positions."""
        return self.attribution.sum(axis=(0, 1))

    def top(self, n: int = 10, signed: bool = False) -> list[tuple[int, float]]:
        """The `n` features with the largest total attribution in size (`signed`: the largest,
        those carrying the metric up): (index, attribution)."""
        total = self.per_feature()
        order = np.argsort(-total if signed else -np.abs(total), kind="stable")[:n]
        return [(int(i), float(total[i])) for i in order]

    def active_features(self) -> np.ndarray:
        """Indices of the features with a nonzero code somewhere."""
        return np.flatnonzero(np.any(self.codes != 0, axis=(0, 1)))


def feature_attribution(
    model: "InterpretableModel | None",
    inputs,
    saes: "SAE | Sequence[SAE]",
    metric: Metric,
    method: str = "linear",
    steps: int = 8,
    positions: Positions = slice(1, None),
) -> FeatureAttribution | list[FeatureAttribution]:
    """The attribution of `metric(logits)` (a scalar array) to every feature of every SAE, at
    every position of `inputs`; one result per SAE (a list when a list of SAEs is given).

    All SAEs are spliced at once at `positions` (as `splice_sae`: all but the first token by
    default). With padded inputs the metric must read real positions only.
    """
    many = not hasattr(saes, "encode")
    saes = list(saes) if many else [saes]
    if not saes:
        raise SAEError("feature_attribution needs at least one SAE")
    model = resolve_model(saes[0], model)
    points = [sae_hook_point(sae, model) for sae in saes]
    if len({p.path for p in points}) < len(points):
        raise SAEError("two of the SAEs read the same hook point: attribute one SAE per hook point")
    if method not in ("linear", "ig"):
        raise SAEError(f"method must be 'linear' or 'ig', got {method!r}")
    if method == "ig" and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise SAEError(f"steps must be a positive int (points on the integration path), got {steps!r}")

    with model.trace(inputs) as trace:
        splices = [splice_sae(sae, model, positions=positions) for sae in saes]
        codes = [s.codes.save() for s in splices]
        grads = [s.codes.grad.save() for s in splices] if method == "linear" else []
        logits = model.output.save()
        value = trace.metric(lambda: metric(logits.value))
    if method == "linear":
        mean_grads = [g.value for g in grads]
    else:
        mean_grads = [_mean_ig_gradient(model, trace.tokens, saes, i, metric, steps, positions)
                      for i in range(len(saes))]
    results = [
        FeatureAttribution(point, method, float(value.value), np.array(c.value), np.array(c.value * g))
        for point, c, g in zip(points, codes, mean_grads)
    ]
    return results if many else results[0]


def _mean_ig_gradient(model, tokens: mx.array, saes, which: int, metric: Metric, steps: int,
                      positions: Positions) -> mx.array:
    """The gradient at SAE `which`'s codes averaged over the codes scaled by alpha in (0, 1)
    (midpoint rule), with the error term held; all `steps` points in one batched run."""
    batch = tokens.shape[0]
    alphas = mx.repeat((mx.arange(steps, dtype=mx.float32) + 0.5) / steps, batch)[:, None, None]
    with model.trace(mx.tile(tokens, (steps, 1))) as trace:
        splices = [splice_sae(sae, model, positions=positions) for sae in saes]
        splices[which].codes.edit(lambda c: c * alphas.astype(c.dtype), label="integration path")
        grad = splices[which].codes.grad.save()
        logits = model.output.save()
        # One metric per point, summed: each point's gradient is its own metric's.
        trace.metric(lambda: sum(metric(part) for part in mx.split(logits.value, steps, axis=0)))
    return grad.value.reshape(steps, batch, *grad.value.shape[1:]).mean(axis=0)


@dataclass
class AblationCheck:
    """How much ablating the top features moves the metric, against as many random active ones
    (`random_changes`: one per draw). Changes are metric(spliced) - metric(ablated)."""

    top_features: list[int]
    top_change: float
    random_features: list[list[int]]
    random_changes: list[float]

    def __str__(self) -> str:
        return (f"ablating the top {len(self.top_features)} features changes the metric by "
                f"{self.top_change:+.4f}; {len(self.random_features[0]) if self.random_features else 0} "
                f"random active ones by {np.mean(self.random_changes):+.4f} on average "
                f"({len(self.random_changes)} draws)")


def ablation_check(
    model: "InterpretableModel | None",
    inputs,
    sae: "SAE",
    result: FeatureAttribution,
    metric: Metric,
    n: int = 10,
    draws: int = 5,
    seed: int = 0,
    positions: Positions = slice(1, None),
) -> AblationCheck:
    """Ablate `result`'s `n` features of largest attribution (at every spliced position), then `draws` times `n`
    random features among the active ones, and report each change of `metric`."""
    model = resolve_model(sae, model)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise SAEError(f"n must be a positive int (features to ablate), got {n!r}")
    active = result.active_features()
    if len(active) < n:
        raise SAEError(f"only {len(active)} features are active on these inputs, fewer than n={n}: lower n")
    rng = np.random.default_rng(seed)

    def metric_with(features: list[int] | None) -> float:
        with model.trace(inputs):
            splice_sae(sae, model, *([ablate(features)] if features else []), positions=positions)
            logits = model.output.save()
        return float(metric(logits.value))

    baseline = metric_with(None)
    top = [i for i, _ in result.top(n, signed=True)]
    check_features(sae, top)
    randoms = [sorted(int(i) for i in rng.choice(active, size=n, replace=False)) for _ in range(draws)]
    return AblationCheck(top, baseline - metric_with(top), randoms,
                         [baseline - metric_with(r) for r in randoms])
