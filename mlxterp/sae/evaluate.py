"""SAE evaluation with the language model: reconstruction metrics plus spliced-in CE loss and KL.

The SAE is spliced in at every position from `drop_first_tokens` on; the attention-sink
position(s), and any token above the SAE's norm limit (`SAE.within_norm_limit`), keep their own
activation, as the SAE never trained on them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import mlx.core as mx
import numpy as np

from ..errors import SAEError
from .metrics import evaluate_reconstruction
from .store import ActivationStore, StoreSettings

if TYPE_CHECKING:
    from ..model import InterpretableModel
    from .model import SAE


def _next_token_losses(logits: mx.array, tokens: mx.array) -> mx.array:
    """(batch, seq-1) cross-entropy of each next token."""
    logits = logits[:, :-1].astype(mx.float32)
    targets = tokens[:, 1:]
    log_z = mx.logsumexp(logits, axis=-1)
    picked = mx.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return log_z - picked


def _kl(clean: mx.array, other: mx.array) -> mx.array:
    """(batch, seq) KL(clean || other) of next-token distributions."""
    p = clean.astype(mx.float32)
    q = other.astype(mx.float32)
    log_p = p - mx.logsumexp(p, axis=-1, keepdims=True)
    log_q = q - mx.logsumexp(q, axis=-1, keepdims=True)
    return mx.sum(mx.exp(log_p) * (log_p - log_q), axis=-1)


def downstream_metrics(
    sae: "SAE",
    model: "InterpretableModel",
    contexts: np.ndarray,
    keep: np.ndarray,
    path: str,
    drop_first_tokens: int = 1,
    contexts_per_forward: int = 4,
) -> dict[str, float]:
    """Next-token CE (clean, SAE spliced, spliced + error term, zero-ablated), CE recovered, KL.

    `contexts` (n, seq) token ids and `keep` (n, seq) mark which positions' predictions count
    (a prediction at t is counted when token t is kept, so sink and special tokens never are).
    """
    positions = slice(drop_first_tokens, None)

    def spliced(x: mx.array) -> mx.array:
        return mx.where(sae.within_norm_limit(x)[..., None], sae(x), x).astype(x.dtype)

    def spliced_with_error(x: mx.array) -> mx.array:
        reconstruction = sae(x)
        out = reconstruction + (x - reconstruction)
        return mx.where(sae.within_norm_limit(x)[..., None], out, x).astype(x.dtype)

    variants = {"clean": None, "sae": spliced, "sae_with_error": spliced_with_error,
                "zero_ablation": mx.zeros_like}
    totals = {name: 0.0 for name in variants}
    kl_total = 0.0
    count = 0
    for start in range(0, len(contexts), contexts_per_forward):
        tokens = mx.array(contexts[start : start + contexts_per_forward])
        weight = mx.array(keep[start : start + contexts_per_forward, :-1].astype(np.float32))
        logits = {}
        for name, edit in variants.items():
            with model.trace(tokens, default_capture=False):
                if edit is not None:
                    model.module(path).output.edit(edit, positions=positions)
                saved = model.output.save()
            logits[name] = saved.value
            totals[name] += float(mx.sum(_next_token_losses(saved.value, tokens) * weight))
        kl_total += float(mx.sum(_kl(logits["clean"][:, :-1], logits["sae"][:, :-1]) * weight))
        count += float(mx.sum(weight))
    if count == 0:
        raise SAEError("no kept tokens to evaluate on: pass longer texts")
    ce = {name: total / count for name, total in totals.items()}
    gap = ce["zero_ablation"] - ce["clean"]
    return {
        "ce_loss_clean": ce["clean"],
        "ce_loss_with_sae": ce["sae"],
        "ce_loss_with_sae_and_error": ce["sae_with_error"],
        "ce_loss_zero_ablation": ce["zero_ablation"],
        "ce_loss_recovered": (ce["zero_ablation"] - ce["sae"]) / gap if gap > 0 else float("nan"),
        "ce_loss_increase": ce["sae"] - ce["clean"],
        "kl_div_with_sae": kl_total / count,
        "n_ce_tokens": int(count),
    }


def evaluate_sae(
    sae: "SAE",
    model: "InterpretableModel",
    dataset: Sequence[str] | None = None,
    layer: int | None = None,
    component: str | None = None,
    n_tokens: int = 20_000,
    n_ce_contexts: int = 16,
    context_length: int | None = None,
    drop_first_tokens: int | None = None,
    batch_size: int = 4096,
    progress: bool = False,
) -> dict[str, float]:
    """Evaluate `sae` on `model`'s activations over `dataset` (default: the bundled corpus).

    Returns MSE, explained variance, FVU, L0, dead and dense fractions and reconstruction cosine
    over `n_tokens` held-out tokens (less those above the SAE's norm limit), plus the downstream
    CE numbers of `downstream_metrics` over `n_ce_contexts` contexts. Layer, component, context length and dropped positions default to
    what the SAE was trained with (its metadata).
    """
    from ..data import load_texts

    meta = sae.metadata
    layer = meta.get("layer") if layer is None else layer
    component = meta.get("component", "output") if component is None else component
    if layer is None:
        raise SAEError("the SAE's metadata names no layer: pass layer=... to evaluate_sae")
    if sae.d_model != model.d_model:
        raise SAEError(
            f"the SAE expects d_model={sae.d_model} but {model.name} has d_model={model.d_model}: "
            "evaluate it on the model it was trained on"
        )
    settings = StoreSettings(
        layer=layer,
        component=component,
        context_length=context_length or int(meta.get("context_length", 256)),
        drop_first_tokens=int(meta.get("drop_first_tokens", 1)) if drop_first_tokens is None else drop_first_tokens,
        seed=1234,
    )
    texts = load_texts(dataset)
    store = ActivationStore(model, texts, settings, max_tokens=n_tokens, progress=progress, name="eval",
                            max_token_norm=meta.get("max_token_norm"))
    metrics = evaluate_reconstruction(sae, store.batches(batch_size))
    n = min(n_ce_contexts, len(store.contexts))
    metrics.update(
        downstream_metrics(sae, model, store.contexts[:n], store.keep[:n], store.path,
                           settings.drop_first_tokens)
    )
    return metrics
