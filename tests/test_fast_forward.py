"""The numpy-exp forward (activation capture, evaluation) equals the fused forward, and undoes itself."""

import sys

import mlx.core as mx
import numpy as np
import pytest

from mlxterp import InterpretableModel
from mlxterp.fast_forward import exp, log_softmax, numpy_exp_forward, numpy_softmax, numpy_swiglu
from tiny_models import FAMILY_ARGS, byte_tokenizer, tiny_model

# The second text is padded, so the trace passes an array mask; the first runs past gemma3's window.
TEXTS = ["a text longer than the sliding window of thirty-two tokens!", "short one"]


@pytest.fixture
def numpy_exp_on(monkeypatch):
    """The numpy path engaged whatever machine runs the tests (it is on by default only on x86)."""
    monkeypatch.setattr("mlxterp.fast_forward.numpy_exp_pays", lambda: True)


def saved_layers(model):
    with model.trace(TEXTS) as trace:
        saved = [model.layers[layer].output.save() for layer in range(model.n_layers)]
        logits = model.output.save()
    return [np.asarray(s) for s in saved] + [np.asarray(logits)], np.asarray(trace.mask).astype(bool)


@pytest.mark.parametrize("family", list(FAMILY_ARGS))
def test_equals_the_fused_forward(family, numpy_exp_on):
    model = InterpretableModel((tiny_model(family), byte_tokenizer()))
    fused, mask = saved_layers(model)
    with numpy_exp_forward(model.model):
        fast, _ = saved_layers(model)
    for layer, (a, b) in enumerate(zip(fused, fast)):
        scale = np.abs(a[mask]).max()
        np.testing.assert_allclose(b[mask], a[mask], atol=2e-6 * scale, err_msg=f"{family} output {layer}")


def test_runs_through_numpy_and_restores_on_error(numpy_exp_on, monkeypatch):
    model = InterpretableModel((tiny_model("llama"), byte_tokenizer()))
    llama = sys.modules[type(model.model).__module__]
    fused_sdpa, fused_swiglu = llama.scaled_dot_product_attention, llama.swiglu
    calls = {"softmax": 0, "swiglu": 0}

    def counted(name, fn):
        def wrapper(*args):
            calls[name] += 1
            return fn(*args)
        return wrapper

    monkeypatch.setattr("mlxterp.fast_forward.numpy_softmax", counted("softmax", numpy_softmax))
    monkeypatch.setattr("mlxterp.fast_forward.numpy_swiglu", counted("swiglu", numpy_swiglu))
    with pytest.raises(RuntimeError, match="stop"):
        with numpy_exp_forward(model.model):
            assert llama.scaled_dot_product_attention is not fused_sdpa
            with model.trace(TEXTS):
                model.output.save()
            raise RuntimeError("stop")
    assert calls == {"softmax": model.n_layers, "swiglu": model.n_layers}
    assert llama.scaled_dot_product_attention is fused_sdpa and llama.swiglu is fused_swiglu


def test_patterns_asked_inside_still_work(numpy_exp_on):
    """A trace asking for a pattern swaps the attention function again, inside ours, and undoes it."""
    model = InterpretableModel((tiny_model("llama"), byte_tokenizer()))
    attn = model.module(model.hook_point(1, "attn").path)
    with model.trace(TEXTS):
        expected = attn.pattern.save()
    with numpy_exp_forward(model.model):
        with model.trace(TEXTS):
            pattern = attn.pattern.save()
            logits = model.output.save()
    np.testing.assert_allclose(np.asarray(pattern), np.asarray(expected), atol=1e-6)
    assert np.isfinite(np.asarray(logits)).all()


def test_off_where_it_does_not_pay(monkeypatch):
    monkeypatch.setenv("MLXTERP_NUMPY_EXP", "0")
    model = InterpretableModel((tiny_model("llama"), byte_tokenizer()))
    llama = sys.modules[type(model.model).__module__]
    fused = llama.scaled_dot_product_attention
    with numpy_exp_forward(model.model):
        assert llama.scaled_dot_product_attention is fused


@pytest.mark.parametrize("numpy_on", [True, False])
def test_log_softmax_and_exp_match_mlx(numpy_on, monkeypatch):
    monkeypatch.setattr("mlxterp.fast_forward.numpy_exp_pays", lambda: numpy_on)
    x = mx.random.normal((2, 7, 300)) * 20.0
    expected = x - mx.logsumexp(x, axis=-1, keepdims=True)
    np.testing.assert_allclose(np.asarray(log_softmax(x)), np.asarray(expected), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(exp(expected)), np.asarray(mx.exp(expected)), rtol=1e-5, atol=1e-30)


def test_numpy_kernels_match_mlx():
    x = mx.random.normal((3, 5, 64)) * 30.0
    np.testing.assert_allclose(np.asarray(numpy_softmax(x)), np.asarray(mx.softmax(x, axis=-1, precise=True)),
                               rtol=1e-5, atol=1e-7)
    gate, up = x, mx.random.normal(x.shape)
    np.testing.assert_allclose(np.asarray(numpy_swiglu(gate, up)), np.asarray(mx.sigmoid(gate) * gate * up),
                               rtol=1e-5, atol=1e-6)
    assert np.asarray(numpy_swiglu(mx.array([-1e4], mx.float32), mx.array([1.0])))[0] == 0.0
