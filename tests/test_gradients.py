"""Gradients in a trace: `.grad.save()` equals central finite differences of the same metric,
pads get zero gradient, the forward stops early only when nothing later is needed, and every
misuse gets a clear error."""

import mlx.core as mx
import numpy as np
import pytest

from mlxterp import InterpretableModel
from mlxterp.errors import TraceError
from tiny_models import byte_tokenizer, tiny_model

TOKEN_A, TOKEN_B = 10, 20


@pytest.fixture(scope="module")
def model():
    return InterpretableModel((tiny_model("llama", seed=2), byte_tokenizer()))


def logit_gap(logits):
    return (logits[:, -1, TOKEN_A] - logits[:, -1, TOKEN_B]).sum()


def metric_and_grad(model, text, path, kind):
    with model.trace(text) as trace:
        port = getattr(model.module(path), kind)
        grad = port.grad.save()
        value = port.save()
        logits = model.output.save()
        metric = trace.metric(lambda: logit_gap(logits.value))
    return float(metric.value), grad.value, value.value


def metric_with_offset(model, text, path, kind, offset):
    with model.trace(text):
        getattr(model.module(path), kind).add(offset)
        logits = model.output.save()
    return float(logit_gap(logits.value))


@pytest.mark.parametrize("path,kind", [
    ("model.layers.0", "output"),
    ("model.layers.1.mlp", "output"),
    ("model.layers.1.self_attn", "input"),
    ("model.layers.2.self_attn.q_proj", "output"),
    ("model.norm", "input"),
])
def test_gradient_equals_central_finite_differences(model, path, kind):
    text = "gradients, please"
    value, grad, activation = metric_and_grad(model, text, path, kind)
    assert grad.shape == activation.shape
    direction = mx.random.normal(activation.shape, key=mx.random.key(7))
    direction = direction / mx.linalg.norm(direction)
    eps = 1e-2
    numeric = (metric_with_offset(model, text, path, kind, eps * direction)
               - metric_with_offset(model, text, path, kind, -eps * direction)) / (2 * eps)
    analytic = float(mx.sum(grad * direction))
    assert analytic == pytest.approx(numeric, rel=2e-3, abs=2e-4)
    assert value == pytest.approx(metric_with_offset(model, text, path, kind, mx.zeros_like(direction)), abs=1e-5)


def test_one_element_of_the_gradient(model):
    text = "abcdef"
    _, grad, activation = metric_and_grad(model, text, "model.layers.1", "output")
    eps = 1e-2
    for position, unit in [(2, 5), (5, 40)]:
        bump = np.zeros(activation.shape, dtype=np.float32)
        bump[0, position, unit] = eps
        numeric = (metric_with_offset(model, text, "model.layers.1", "output", mx.array(bump))
                   - metric_with_offset(model, text, "model.layers.1", "output", mx.array(-bump))) / (2 * eps)
        assert float(grad[0, position, unit]) == pytest.approx(numeric, rel=5e-3, abs=2e-4)


def test_edits_apply_before_the_gradient(model):
    """The gradient is at the edited value: doubling a layer's output halves d metric / d input."""
    text = "scaled run"

    def grads(factor):
        with model.trace(text) as trace:
            model.layers[1].mlp.output.scale(factor)
            before = model.layers[1].mlp.down_proj.output.grad.save()
            after = model.layers[1].mlp.output.grad.save()
            logits = model.output.save()
            trace.metric(lambda: logit_gap(logits.value))
        return before.value, after.value

    before, after = grads(2.0)
    np.testing.assert_allclose(np.array(before), 2.0 * np.array(after), rtol=1e-5, atol=1e-6)


def test_padded_batch_pads_get_zero_gradient_and_rows_match_alone(model):
    texts = ["a longer first text", "short"]
    with model.trace(texts) as trace:
        grad = model.layers[1].output.grad.save()
        logits = model.output.save()
        last = trace.mask.sum(axis=1) - 1
        trace.metric(lambda: (logits.value[mx.arange(2), last, TOKEN_A]).sum())
    mask = np.array(trace.mask)
    g = np.array(grad.value)
    assert np.all(g[mask == 0] == 0)
    assert np.abs(g[mask == 1]).max() > 0
    for row, text in enumerate(texts):
        with model.trace(text) as alone:
            single = model.layers[1].output.grad.save()
            single_logits = model.output.save()
            alone.metric(lambda: single_logits.value[0, -1, TOKEN_A])
        n = len(text)
        np.testing.assert_allclose(g[row, :n], np.array(single.value)[0], rtol=1e-4, atol=1e-5)


def test_a_metric_reading_pads_is_refused(model):
    with pytest.raises(TraceError, match="not zero on padding"):
        with model.trace(["a longer first text", "short"]) as trace:
            model.layers[0].output.grad.save()
            logits = model.output.save()
            trace.metric(lambda: logits.value[:, -1, TOKEN_A].sum())


def test_the_forward_stops_after_the_last_layer_the_metric_needs(model):
    blocks = model.model.model.layers
    kept = blocks[2]

    class Broken:
        def __call__(self, *args, **kwargs):
            raise AssertionError("layer 2 ran although nothing needs it")

        def __getattr__(self, name):
            return getattr(kept, name)

    blocks[2] = Broken()
    try:
        with model.trace("early stop") as trace:
            grad = model.layers[0].output.grad.save()
            hidden = model.layers[1].output.save()
            trace.metric(lambda: (hidden.value[0, -1] ** 2).sum())
        assert grad.shape == (1, 10, model.d_model)
        with pytest.raises(AssertionError, match="layer 2 ran"):
            with model.trace("early stop") as trace:
                model.layers[0].output.grad.save()
                logits = model.output.save()
                trace.metric(lambda: logit_gap(logits.value))
    finally:
        blocks[2] = kept


def test_metric_value_without_gradients(model):
    with model.trace("just a value") as trace:
        logits = model.output.save()
        metric = trace.metric(lambda: logit_gap(logits.value))
    assert float(metric.value) == pytest.approx(float(logit_gap(trace.logits)), abs=1e-6)


def test_gradient_at_the_logits(model):
    with model.trace("xyz") as trace:
        grad = model.output.grad.save()
        logits = model.output.save()
        trace.metric(lambda: logit_gap(logits.value))
    expected = np.zeros(grad.shape, dtype=np.float32)
    expected[0, -1, TOKEN_A], expected[0, -1, TOKEN_B] = 1.0, -1.0
    np.testing.assert_array_equal(np.array(grad.value), expected)


def test_bad_gradient_requests(model):
    with pytest.raises(TraceError, match="only available inside"):
        model.layers[0].output.grad.save()
    with pytest.raises(TraceError, match="no metric to differentiate"):
        with model.trace("abc"):
            model.layers[0].output.grad.save()
    with pytest.raises(TraceError, match="must be a scalar, got an array of shape \\(1, 3\\)"):
        with model.trace("abc") as trace:
            model.layers[0].output.grad.save()
            logits = model.output.save()
            trace.metric(lambda: logits.value[:, :, TOKEN_A])
    with pytest.raises(TraceError, match="returned float, not an mx.array"):
        with model.trace("abc") as trace:
            model.layers[0].output.grad.save()
            logits = model.output.save()
            trace.metric(lambda: float(logits.value[0, -1, TOKEN_A].item()))
    with pytest.raises(TraceError, match="needs a function"):
        with model.trace("abc") as trace:
            trace.metric(3.0)
    with pytest.raises(TraceError, match="already has a metric"):
        with model.trace("abc") as trace:
            logits = model.output.save()
            trace.metric(lambda: logits.value.sum())
            trace.metric(lambda: logits.value.mean())
    with model.trace("abc") as trace:
        pass
    with pytest.raises(TraceError, match="inside the `with model.trace"):
        trace.metric(lambda: mx.array(0.0))
    with pytest.raises(TraceError, match="not in generation"):
        with model.generate("abc", max_tokens=2):
            model.layers[0].output.grad.save()


@pytest.mark.slow
def test_trace_gradient_equals_mx_grad_of_a_hand_written_forward(default_model_pair):
    """On SmolLM2: d logit gap / d layer 8's output, from the trace and from mx.grad of the
    rest of the network written out by hand."""
    pair = default_model_pair
    model = InterpretableModel(pair.model, pair.tokenizer, name=pair.name)
    text = "When Mary and John went to the store, John gave a drink to"
    mary, john = model.encode(" Mary")[0], model.encode(" John")[0]
    with model.trace(text) as trace:
        hidden = model.layers[8].output.save()
        grad = model.layers[8].output.grad.save()
        logits = model.output.save()
        metric = trace.metric(lambda: logits.value[0, -1, mary] - logits.value[0, -1, john])

    blocks = model.model.model.layers

    def rest(h):
        for block in blocks[9:]:
            h = block(h, mask="causal")
        out = model.unembed(h)
        return out[0, -1, mary] - out[0, -1, john]

    by_hand = mx.grad(rest)(hidden.value)
    assert float(rest(hidden.value)) == pytest.approx(float(metric.value), abs=1e-3)
    np.testing.assert_allclose(np.array(grad.value), np.array(by_hand), rtol=1e-3, atol=1e-5)
    assert float(mx.abs(grad.value).max()) > 0
