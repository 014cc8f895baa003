"""SAE evaluation with the language model: reconstruction metrics plus spliced-in CE loss and KL.

The SAE is spliced in (`sae_edit_fn`, the one splice) at every position from the contexts'
`drop_first_tokens` on; tokens above the SAE's norm limit keep their own activation, as the SAE
never trained on them. A transcoder replaces its output hook point (the MLP's output), and zero
ablation zeroes that.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import mlx.core as mx
import numpy as np

from ..activations import ActivationStore, ContextSettings, within_limits
from ..data import load_texts
from ..errors import SAEError
from ..fast_forward import exp, log_softmax, numpy_exp_forward
from ..sae.checks import resolve_model, sae_hook_point
from ..sae.metrics import evaluate_reconstruction
from .interventions import position_mask, sae_edit_fn, splice_edit

if TYPE_CHECKING:
    from ..hookpoint import HookPoint
    from ..model import InterpretableModel
    from ..sae.model import SAE


def _next_token_log_probs(logits: mx.array) -> mx.array:
    """(batch, seq-1, vocab) float32 log-probabilities of the next token at each position."""
    return log_softmax(logits[:, :-1])


def _next_token_losses(log_probs: mx.array, tokens: mx.array) -> mx.array:
    """(batch, seq-1) cross-entropy of each next token."""
    return -mx.take_along_axis(log_probs, tokens[:, 1:, None], axis=-1)[..., 0]


def _kl(log_p: mx.array, log_q: mx.array) -> mx.array:
    """(batch, seq) KL(p || q) of next-token distributions given as log-probabilities."""
    return mx.sum(exp(log_p) * (log_p - log_q), axis=-1)


def downstream_metrics(
    sae: "SAE",
    model: "InterpretableModel",
    contexts: np.ndarray,
    keep: np.ndarray,
    hook: "HookPoint",
    drop_first_tokens: int = 1,
    contexts_per_forward: int = 4,
) -> dict[str, float]:
    """Next-token CE (clean, SAE spliced, zero-ablated), CE recovered, KL.

    `contexts` (n, seq) token ids and `keep` (n, seq) mark which positions' predictions count
    (a prediction at t is counted when token t is kept, so sink and special tokens never are).
    The splice with the error term is not run: it returns the clean activation bit for bit
    (`sae_edit_fn`), so its loss would be the clean one.
    """
    positions = slice(drop_first_tokens, None)
    variants = {"clean": None, "sae": sae_edit_fn(sae, error_term=False), "zero_ablation": _zero_ablation}
    totals = {name: 0.0 for name in variants}
    kl_total = 0.0
    count = 0.0
    for start in range(0, len(contexts), contexts_per_forward):
        tokens = mx.array(contexts[start : start + contexts_per_forward])
        weight = mx.array(keep[start : start + contexts_per_forward, :-1].astype(np.float32))
        log_probs = {}
        for name, edit in variants.items():
            with numpy_exp_forward(model.model), model.trace(tokens, default_capture=False):
                if edit is not None:
                    splice_edit(sae, model, edit, positions, f"evaluate ({name})", hook.layer)
                saved = model.output.save()
            log_probs[name] = _next_token_log_probs(saved.value)
            totals[name] += float(mx.sum(_next_token_losses(log_probs[name], tokens) * weight))
        kl_total += float(mx.sum(_kl(log_probs["clean"], log_probs["sae"]) * weight))
        count += float(mx.sum(weight))
    if count == 0:
        raise SAEError("no kept tokens to evaluate on: pass longer texts")
    ce = {name: total / count for name, total in totals.items()}
    gap = ce["zero_ablation"] - ce["clean"]
    return {
        "ce_loss_clean": ce["clean"],
        "ce_loss_with_sae": ce["sae"],
        "ce_loss_zero_ablation": ce["zero_ablation"],
        "ce_loss_recovered": (ce["zero_ablation"] - ce["sae"]) / gap if gap > 0 else float("nan"),
        "ce_loss_increase": ce["sae"] - ce["clean"],
        "kl_div_with_sae": kl_total / count,
        "n_ce_tokens": int(count),
    }


def evaluate_sae(
    sae: "SAE",
    model: "InterpretableModel | None" = None,
    dataset: Sequence[str] | None = None,
    n_tokens: int = 20_000,
    n_ce_contexts: int = 16,
    contexts: ContextSettings | None = None,
    batch_size: int = 4096,
    progress: bool = False,
) -> dict[str, float]:
    """Evaluate `sae` on `model`'s activations over `dataset` (default: the bundled corpus).

    Returns MSE, explained variance, FVU, L0, dead and dense fractions and reconstruction cosine
    over `n_tokens` tokens (less those above the SAE's norm limit), plus the downstream CE
    numbers of `downstream_metrics` over `n_ce_contexts` contexts. The hook point is the SAE's
    own (a transcoder: FVU of its output hook point's value); `contexts` default to what the SAE
    was trained with (its metadata). `model` None uses the model the SAE is attached to.
    """
    model = resolve_model(sae, model)
    hook = sae_hook_point(sae, model)
    settings = contexts or ContextSettings.from_metadata(sae.metadata)
    meta = sae.metadata
    if not sae.transcode:
        store = ActivationStore(model, load_texts(dataset), hook, settings, max_tokens=n_tokens, seed=1234,
                                progress=progress, name="eval", max_token_norm=meta.get("max_token_norm"))
        batches = store.batches(batch_size)
    else:
        out = sae.output_hook_point
        store = ActivationStore(model, load_texts(dataset), (hook, model.hook_point(out.layer, out.component)),
                                settings, max_tokens=n_tokens, seed=1234, progress=progress, name="eval")
        limits = [meta.get("max_token_norm"), meta.get("max_target_norm")]
        batches = (rows[mx.array(np.flatnonzero(keep))] for rows in store.batches(batch_size)
                   if (keep := within_limits(np.asarray(rows), limits, sae.d_model)).any())
    metrics = evaluate_reconstruction(sae, batches)
    n = min(n_ce_contexts, len(store.contexts))
    metrics.update(downstream_metrics(sae, model, store.contexts[:n], store.keep[:n], hook,
                                      settings.drop_first_tokens))
    return metrics


def _zero_ablation(x: mx.array, y: mx.array | None = None, index=None) -> mx.array:
    """The value an SAE (x) or transcoder (y) replaces, zeroed at the positions `index`."""
    target = x if y is None else y
    if index is None:
        return mx.zeros_like(target)
    return mx.where(position_mask(target.shape[1], index)[None, :, None], mx.zeros_like(target), target)
