"""Activation patching: how much of a clean run each layer restores inside a corrupted run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import mlx.core as mx
import numpy as np

from .errors import TraceError

if TYPE_CHECKING:
    from .model import InterpretableModel

Metric = Callable[[mx.array], float]


@dataclass
class PatchingResult:
    """Recovery per layer (and per position when patched position by position).

    `recovery[l]` (or `recovery[l, p]`) is (metric(patched) - metric(corrupted)) /
    (metric(clean) - metric(corrupted)): 1 means patching there restores the clean behaviour,
    0 means it changes nothing.
    """

    component: str
    clean_metric: float
    corrupted_metric: float
    patched_metric: np.ndarray
    recovery: np.ndarray

    def best_layer(self) -> int:
        per_layer = self.recovery if self.recovery.ndim == 1 else self.recovery.max(axis=1)
        return int(np.argmax(per_layer))


def logit_difference(model: "InterpretableModel", correct: str, wrong: str) -> Metric:
    """Metric: logit of `correct`'s first token minus `wrong`'s at the last position."""
    correct_id, wrong_id = model.encode(correct)[0], model.encode(wrong)[0]
    return lambda logits: float(logits[0, -1, correct_id] - logits[0, -1, wrong_id])


def token_log_prob(token_id: int) -> Metric:
    """Metric: log-probability of `token_id` at the last position."""

    def metric(logits: mx.array) -> float:
        last = logits[0, -1].astype(mx.float32)
        return float(last[token_id] - mx.logsumexp(last))

    return metric


def activation_patching(
    model: "InterpretableModel",
    clean: str,
    corrupted: str,
    metric: Metric | None = None,
    component: str = "output",
    layers: list[int] | None = None,
    per_position: bool = False,
) -> PatchingResult:
    """Patch the clean run's `component` activations into the corrupted run, layer by layer.

    `clean` and `corrupted` must tokenize to the same length (as in the IOI setup, where names
    are swapped). The default metric is the log-probability, at the last position, of the token
    the clean run predicts there. With `per_position`, each (layer, position) is patched alone.
    """
    layers = list(range(model.n_layers)) if layers is None else [model.anatomy.check_layer(l) for l in layers]
    paths = [model.hook_point(layer, component).path for layer in layers]
    corrupted_ids, sources, metric, clean_value, corrupted_value = clean_and_corrupted(
        model, clean, corrupted, metric, lambda: [model.module(path).output.save() for path in paths])
    positions = [None] if not per_position else list(range(len(corrupted_ids)))
    patched = np.zeros((len(layers), len(positions)))
    for i, path in enumerate(paths):
        for j, position in enumerate(positions):
            edit = _replace_with(sources[i].value, position)
            patched[i, j] = metric(_logits(model, corrupted_ids, path, edit))
    recovery = recovery_of(patched, clean_value, corrupted_value)
    squeeze = (lambda a: a[:, 0]) if not per_position else (lambda a: a)
    return PatchingResult(component, clean_value, corrupted_value, squeeze(patched), squeeze(recovery))


def clean_and_corrupted(model: "InterpretableModel", clean: str, corrupted: str, metric: Metric | None, save):
    """The common start of patching: the corrupted prompt's token ids, the clean run's values that
    `save()` declares (a list of saved handles), the metric (default: the log-probability of the
    clean run's top next token) and its values on the clean and the corrupted prompt."""
    clean_ids, corrupted_ids = model.encode(clean), model.encode(corrupted)
    if len(clean_ids) != len(corrupted_ids):
        raise TraceError(
            f"clean and corrupted prompts must have the same number of tokens to patch position "
            f"by position; got {len(clean_ids)} and {len(corrupted_ids)}. Adjust the wording "
            "(model.to_str_tokens shows the tokens)."
        )
    with model.trace(clean_ids) as clean_trace:
        sources = save()
        model.output.save()
    if metric is None:
        metric = token_log_prob(int(mx.argmax(clean_trace.logits[0, -1]).item()))
    return corrupted_ids, sources, metric, metric(clean_trace.logits), metric(_logits(model, corrupted_ids))


def recovery_of(patched: np.ndarray, clean_value: float, corrupted_value: float) -> np.ndarray:
    """(patched - corrupted) / (clean - corrupted), refusing a metric that does not tell the runs apart."""
    denominator = clean_value - corrupted_value
    if abs(denominator) < 1e-8:
        raise TraceError(
            "the metric is the same on the clean and corrupted prompts, so recovery is undefined: "
            "choose prompts (or a metric, e.g. logit_difference) that tell them apart"
        )
    return (patched - corrupted_value) / denominator


def _replace_with(source: mx.array, position: int | None):
    if position is None:
        return lambda a: source.astype(a.dtype)

    def patch_one(a: mx.array) -> mx.array:
        out = mx.array(a)
        out[:, position] = source[:, position].astype(a.dtype)
        return out

    return patch_one


def _logits(model: "InterpretableModel", ids: list[int], path: str | None = None, edit=None) -> mx.array:
    with model.trace(ids):
        if path is not None:
            model.module(path).output.edit(edit)
        logits = model.output.save()
    return logits.value
