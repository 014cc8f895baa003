"""Activation patching: how much of a clean run each layer restores inside a corrupted run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import mlx.core as mx
import numpy as np
from tqdm.auto import tqdm

from .errors import TraceError

if TYPE_CHECKING:
    from .model import InterpretableModel

Metric = Callable[[mx.array], mx.array]  # logits (batch, seq, vocab) -> a scalar array


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


def logit_difference(model: "InterpretableModel", correct: str | list[str], wrong: str | list[str]) -> Metric:
    """Metric: logit of `correct`'s first token minus `wrong`'s at the last position, averaged
    over the batch; lists give each row its own pair (IOI prompt sets)."""
    correct_ids = mx.array([model.encode(t)[0] for t in _as_list(correct)])
    wrong_ids = mx.array([model.encode(t)[0] for t in _as_list(wrong)])

    def metric(logits: mx.array) -> mx.array:
        last = logits[:, -1].astype(mx.float32)
        rows = mx.arange(last.shape[0])
        return mx.mean(last[rows, correct_ids] - last[rows, wrong_ids])

    return metric


def token_log_prob(token_id: int | list[int]) -> Metric:
    """Metric: log-probability of `token_id` (or one per row) at the last position, averaged
    over the batch."""
    ids = mx.array(token_id if isinstance(token_id, list) else [token_id])

    def metric(logits: mx.array) -> mx.array:
        last = logits[:, -1].astype(mx.float32)
        rows = mx.arange(last.shape[0])
        return mx.mean(last[rows, ids] - mx.logsumexp(last, axis=-1))

    return metric


def paired_tokens(model: "InterpretableModel", clean, corrupted) -> tuple[mx.array, mx.array]:
    """Token ids (batch, seq) of clean and corrupted prompts (a string or a list each), which
    must all have the same number of tokens so that positions line up."""
    clean_tokens, clean_mask = model.tokenize_batch(clean)
    corrupted_tokens, corrupted_mask = model.tokenize_batch(corrupted)
    lengths = [int(n) for n in clean_mask.sum(axis=1).tolist() + corrupted_mask.sum(axis=1).tolist()]
    if clean_tokens.shape[0] != corrupted_tokens.shape[0] or len(set(lengths)) > 1:
        raise TraceError(
            f"clean and corrupted prompts must pair up and have the same number of tokens to patch "
            f"position by position; got {clean_tokens.shape[0]} clean and {corrupted_tokens.shape[0]} "
            f"corrupted prompts of {sorted(set(lengths))} tokens. Adjust the wording "
            "(model.to_str_tokens shows the tokens)."
        )
    return clean_tokens, corrupted_tokens


def activation_patching(
    model: "InterpretableModel",
    clean: str,
    corrupted: str,
    metric: Metric | None = None,
    component: str = "output",
    layers: list[int] | None = None,
    per_position: bool | list[int] = False,
    progress: bool = True,
) -> PatchingResult:
    """Patch the clean run's `component` activations into the corrupted run, layer by layer.

    `clean` and `corrupted` (a prompt or a list of prompts, patched all at once) must tokenize
    to the same length (as in the IOI setup, where names are swapped). The default metric is the
    log-probability, at the last position, of the token the clean run predicts there. With
    `per_position`, each (layer, position) is patched alone (one forward each; `progress`
    shows a bar); a list patches only those positions, one at a time (columns in that order).
    """
    layers = list(range(model.n_layers)) if layers is None else [model.anatomy.check_layer(l) for l in layers]
    paths = [model.hook_point(layer, component).path for layer in layers]
    corrupted_ids, sources, metric, clean_value, corrupted_value = clean_and_corrupted(
        model, clean, corrupted, metric, lambda: [model.module(path).output.save() for path in paths])
    positions = patch_positions(per_position, corrupted_ids.shape[1])
    patched = np.zeros((len(layers), len(positions)))
    bar = tqdm(total=patched.size, desc=f"patching {component}", unit="forward", disable=not progress, leave=False)
    for i, path in enumerate(paths):
        for j, position in enumerate(positions):
            edit = _replace_with(sources[i].value, position)
            patched[i, j] = float(metric(_logits(model, corrupted_ids, path, edit)))
            bar.update()
        bar.set_postfix(layer=layers[i], best=f"{np.max((patched[: i + 1] - corrupted_value)):+.3f}")
    bar.close()
    recovery = recovery_of(patched, clean_value, corrupted_value)
    squeeze = (lambda a: a[:, 0]) if not per_position else (lambda a: a)
    return PatchingResult(component, clean_value, corrupted_value, squeeze(patched), squeeze(recovery))


def clean_and_corrupted(model: "InterpretableModel", clean, corrupted, metric: Metric | None, save):
    """The common start of patching: the corrupted prompts' token ids (batch, seq), the clean run's
    values that `save()` declares (a list of saved handles), the metric (default: the
    log-probability of the clean run's top next token) and its values on the clean and the
    corrupted prompts."""
    clean_ids, corrupted_ids = paired_tokens(model, clean, corrupted)
    with model.trace(clean_ids) as clean_trace:
        sources = save()
        model.output.save()
    if metric is None:
        metric = token_log_prob(mx.argmax(clean_trace.logits[:, -1], axis=-1).tolist())
    clean_value = float(metric(clean_trace.logits))
    return corrupted_ids, sources, metric, clean_value, float(metric(_logits(model, corrupted_ids)))


def patch_positions(per_position: bool | list[int], n_tokens: int) -> list[int | None]:
    """The positions patched one at a time: [None] (all at once), every position, or a list."""
    positions = {False: [None], True: list(range(n_tokens))}.get(per_position) if isinstance(per_position, bool) \
        else list(per_position)
    if not positions or any(not isinstance(p, int) or not -n_tokens <= p < n_tokens for p in positions if p is not None):
        raise TraceError(f"per_position={per_position!r}: pass True, False or a list of positions of the {n_tokens} tokens")
    return positions


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


def _as_list(texts: str | list[str]) -> list[str]:
    return [texts] if isinstance(texts, str) else list(texts)


def _logits(model: "InterpretableModel", ids: mx.array, path: str | None = None, edit=None) -> mx.array:
    with model.trace(ids):
        if path is not None:
            model.module(path).output.edit(edit)
        logits = model.output.save()
    return logits.value
