"""Gradients in a trace: a scalar metric of the run, and d metric / d value at any module's
input or output (or an SAE's codes), with `.grad.save()`.

MLX has no backward hooks: gradients come from `mx.value_and_grad` over a function. The whole
forward, with every edit, is that function, of one zero array per gradient point, added to the
value there (after its edits): the gradient with respect to that zero is the gradient with
respect to the value. A first pass builds the forward's graph without evaluating it (MLX is
lazy), only to learn the shapes of those zeros and to check the metric.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import mlx.core as mx

from .errors import TraceError

if TYPE_CHECKING:
    from .model import InterpretableModel
    from .tracing import HookedRun, Saved, Trace


class GradPort:
    """The gradient of the trace's metric at a module's input or output: `.save()` keeps it."""

    def __init__(self, model: "InterpretableModel", path: str, kind: str):
        self._model = model
        self._path = path
        self._kind = kind

    def save(self) -> "Saved":
        """Keep d metric / d value, same shape as the value, filled in when the block exits
        (declare the metric with `trace.metric(...)`)."""
        where = f"{self._path or 'model'}.{self._kind}.grad"
        return self._model._active_interventions(where).save_grad(self._path, self._kind)

    def __repr__(self) -> str:
        return f"GradPort({self._path or 'model'!r}, {self._kind})"


def declare_metric(trace: "Trace", fn: Callable[[], mx.array], handle: "Saved") -> "Saved":
    """Set the trace's metric: a function of no arguments returning a scalar array, reading saved
    values (`logits = model.output.save()`, then
    `trace.metric(lambda: logits[0, -1, a] - logits[0, -1, b])`). `handle` holds its value."""
    if trace.model._interventions is not trace.interventions:
        raise TraceError(
            "trace.metric(...) declares the metric of an open trace: call it inside the "
            "`with model.trace(...) as trace:` block"
        )
    if not callable(fn):
        raise TraceError(
            f"trace.metric needs a function of no arguments returning a scalar array, got "
            f"{type(fn).__name__}: e.g. `trace.metric(lambda: logits[0, -1, a] - logits[0, -1, b])` "
            "with `logits = model.output.save()`"
        )
    if trace.interventions.metric is not None:
        raise TraceError("this trace already has a metric: declare one metric per trace (sum several if needed)")
    trace.interventions.metric = (fn, handle)
    return handle


def add_zero(runner: "HookedRun", key: tuple[str, str], array: mx.array) -> mx.array:
    """At a gradient point: record the value's shape (first pass), or add the zero whose
    gradient is wanted (the pass under value_and_grad)."""
    if runner.deltas is None:
        runner.shapes[key] = (array.shape, array.dtype)
        return array
    return array + runner.deltas[key]


def run_with_gradients(forward: Callable[[], mx.array | None], runner: "HookedRun", mask: mx.array) -> None:
    """Run `forward` (the hooked model, returning the logits) under `mx.value_and_grad` and fill
    in the metric's handle and every gradient asked for; pads must get zero gradient."""
    interventions = runner.interventions
    if interventions.metric is None:
        asked = ", ".join(_where(key) for key in interventions.grads)
        raise TraceError(
            f"a gradient was asked ({asked}) but the trace has no metric to differentiate: declare "
            "one in the block, e.g. `logits = model.output.save()` then "
            "`trace.metric(lambda: logits[0, -1, a] - logits[0, -1, b])`"
        )
    metric_fn, handle = interventions.metric
    saves = list(interventions.saves.values())

    def run(deltas: dict | None) -> mx.array:
        for saved in saves:
            saved._chunks.clear()
        runner.deltas = deltas
        forward()
        return _checked_metric(metric_fn())

    run(None)  # graph only: the shapes of the gradient points, and the metric's shape
    keys = list(interventions.grads)
    missing = [k for k in keys if k not in runner.shapes]
    if missing:
        raise TraceError(
            f"the forward never reached {', '.join(_where(k) for k in missing)}: nothing there to "
            "take a gradient of (an SAE's codes exist only where it is spliced with splice_sae)"
        )

    def with_zeros(zeros: list[mx.array]) -> mx.array:
        return run(dict(zip(keys, zeros)))

    zeros = [mx.zeros(*runner.shapes[k]) for k in keys]
    if keys:
        value, grads = mx.value_and_grad(with_zeros)(zeros)
    else:
        value, grads = with_zeros(zeros), []
    runner.deltas = None
    mx.eval(value, grads)
    handle._chunks[:] = [value]
    for key, grad in zip(keys, grads):
        _check_pads(grad, mask, key)
        interventions.grads[key]._chunks[:] = [grad]


def _checked_metric(value) -> mx.array:
    if not isinstance(value, mx.array):
        raise TraceError(
            f"the metric returned {type(value).__name__}, not an mx.array: return the array itself "
            "(no float() or .item(), which cut the gradient), e.g. `logits[0, -1, a] - logits[0, -1, b]`"
        )
    if value.size != 1:
        raise TraceError(
            f"the metric must be a scalar, got an array of shape {tuple(value.shape)}: reduce it, "
            "e.g. with .sum() or .mean() over the batch (a gradient is of one number)"
        )
    if not mx.issubdtype(value.dtype, mx.floating):
        raise TraceError(f"the metric must be a float scalar, got {value.dtype}: compute it from logits or activations")
    return value.reshape(()).astype(mx.float32)


def _check_pads(grad: mx.array, mask: mx.array, key) -> None:
    """With right padding and causal attention no real token depends on a pad, so a gradient
    at a pad means the metric read a padded position."""
    if grad.ndim < 2 or tuple(grad.shape[:2]) != tuple(mask.shape) or bool(mx.all(mask)):
        return
    pads = (mask == 0).reshape(*mask.shape, *([1] * (grad.ndim - 2)))
    if bool(mx.any((grad != 0) & pads)):
        raise TraceError(
            f"the gradient at {_where(key)} is not zero on padding: the metric reads padded "
            "positions (e.g. logits[:, -1] of a shorter text). Read each row's last real token, "
            "`last = trace.mask.sum(axis=1) - 1`, or weight by `trace.mask`"
        )


def _where(key: tuple[str, str]) -> str:
    path, kind = key
    return f"{path or 'model'}.{kind}.grad"
