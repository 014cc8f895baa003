"""evaluate_sae against a by-hand computation on the tiny model: reconstruction and CE metrics."""

import math

import mlx.core as mx
import numpy as np
import pytest

from mlxterp.activations import ContextSettings, pack_texts
from mlxterp.errors import SAEError
from mlxterp.features import evaluate_sae

SETTINGS = ContextSettings(context_length=16)


def next_token_ce(logits, tokens, weight):
    """Mean next-token cross-entropy over the predictions `weight` (n, seq-1) counts."""
    logits = np.array(logits, dtype=np.float64)[:, :-1]
    log_probs = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1, keepdims=True)
    picked = np.take_along_axis(log_probs, np.array(tokens)[:, 1:, None], axis=-1)[..., 0]
    return float(-(picked * weight).sum() / weight.sum())


def run(model, tokens, edit=None):
    path = model.hook_point(1, "output").path
    with model.trace(mx.array(tokens), default_capture=False):
        if edit is not None:
            model.module(path).output.edit(edit, positions=slice(1, None))
        acts = model.module(path).output.save()
        logits = model.output.save()
    return np.array(acts.value), np.array(logits.value)


def test_evaluate_sae_equals_a_by_hand_computation(tiny, tiny_sae, texts):
    metrics = evaluate_sae(tiny_sae, tiny, texts, n_tokens=100_000, n_ce_contexts=3, contexts=SETTINGS)
    packed = pack_texts(tiny, texts, SETTINGS)
    acts, clean_logits = run(tiny, packed.tokens)
    x = acts[packed.keep].astype(np.float64)
    recon = np.array(tiny_sae(mx.array(x.astype(np.float32))), dtype=np.float64)
    assert metrics["n_tokens"] == packed.n_tokens == len(x)
    assert metrics["fvu"] == pytest.approx(((x - recon) ** 2).sum() / ((x - x.mean(0)) ** 2).sum(), rel=1e-4)
    assert metrics["mse"] == pytest.approx(((x - recon) ** 2).mean(), rel=1e-4)

    # CE over the first 3 contexts: a prediction at t counts when token t is kept
    tokens, weight = packed.tokens[:3], packed.keep[:3, :-1].astype(np.float64)
    clean = next_token_ce(clean_logits[:3], tokens, weight)
    with_sae = next_token_ce(run(tiny, tokens, lambda a: tiny_sae(a))[1], tokens, weight)
    zeroed = next_token_ce(run(tiny, tokens, mx.zeros_like)[1], tokens, weight)
    assert metrics["ce_loss_clean"] == pytest.approx(clean, rel=1e-4)
    assert metrics["ce_loss_with_sae"] == pytest.approx(with_sae, rel=1e-4)
    assert metrics["ce_loss_zero_ablation"] == pytest.approx(zeroed, rel=1e-4)
    assert "ce_loss_with_sae_and_error" not in metrics  # the clean loss by construction: not run
    # A random model predicts no better than with its residual stream zeroed, so "recovered" has
    # no denominator here: it is reported as NaN, not as a meaningless ratio.
    assert zeroed <= clean and math.isnan(metrics["ce_loss_recovered"])
    assert metrics["n_ce_tokens"] == int(weight.sum())
    assert with_sae != pytest.approx(clean, rel=1e-3)  # the random SAE really changes the model


def test_evaluate_sae_defaults_come_from_the_sae(tiny, tiny_sae, texts):
    tiny_sae.metadata["context_length"] = 16
    try:
        by_default = evaluate_sae(tiny_sae, None, texts, n_ce_contexts=1)
        explicit = evaluate_sae(tiny_sae, tiny, texts, n_ce_contexts=1, contexts=SETTINGS)
        assert by_default == pytest.approx(explicit, nan_ok=True)
    finally:
        del tiny_sae.metadata["context_length"]


def test_evaluate_sae_refuses_an_sae_of_another_model(tiny, make_sae, texts):
    wrong = make_sae(tiny, layer=None)
    with pytest.raises(SAEError, match="names no hook point"):
        evaluate_sae(wrong, tiny, texts)
    narrow = make_sae(tiny)
    narrow.metadata["model_name"] = "another-model"
    with pytest.raises(SAEError, match="trained on 'another-model'"):
        evaluate_sae(narrow, tiny, texts)
