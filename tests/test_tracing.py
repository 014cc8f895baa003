"""trace(): captured activations match a by-hand forward for every family; edits and errors."""

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm.models.base import create_causal_mask

from mlxterp import InterpretableModel
from mlxterp.hookpoint import HookPoint
from mlxterp.errors import TraceError
from tiny_models import D, FAMILY_ARGS, byte_tokenizer, tiny_model

TOL = dict(rtol=1e-5, atol=1e-5)


def wrap(family="llama"):
    return InterpretableModel((tiny_model(family), byte_tokenizer()))


def blocks_by_hand(model, family, tokens):
    """Each block's output computed by running the embedding and blocks directly."""
    inner = model.model
    if family == "gpt2":
        h = inner.wte(tokens) + inner.wpe(mx.arange(tokens.shape[1]))
    elif family == "gpt_neox":
        h = inner.embed_in(tokens)
    else:
        h = inner.embed_tokens(tokens)
    if family in ("gemma", "gemma2"):
        h = h * (D**0.5)
    elif family == "gemma3_text":
        h = h * mx.array(D**0.5, mx.bfloat16).astype(h.dtype)
    outputs = []
    mask = create_causal_mask(tokens.shape[1])
    for layer in model.layers:
        h = layer(h, mask, cache=None)
        outputs.append(h)
    return outputs


@pytest.mark.parametrize("family", sorted(FAMILY_ARGS))
def test_capture_equals_by_hand_forward(family):
    model = wrap(family)
    text = "The quick brown fox"
    with model.trace(text) as trace:
        for layer in model.layers:
            layer.output.save()
        logits = model.output.save()
    expected = blocks_by_hand(model.model, family, trace.tokens)
    for i, h in enumerate(expected):
        got = trace.activations[model.hook_point(i).path]
        assert got.shape == (1, len(text), D)
        np.testing.assert_allclose(np.array(got), np.array(h), **TOL)
    np.testing.assert_allclose(np.array(logits.value), np.array(model.model(trace.tokens)), **TOL)
    # the logit lens of the last block reproduces the logits
    np.testing.assert_allclose(
        np.array(model.unembed(expected[-1])), np.array(logits.value), rtol=1e-4, atol=1e-4
    )


def test_mlp_and_attention_outputs_match_block_internals():
    model = wrap("llama")
    with model.trace("abc def") as trace:
        pass
    block = model.model.layers[1]
    x = trace.activations["model.layers.0"]
    attn = block.self_attn(block.input_layernorm(x), "causal", None)
    mlp = block.mlp(block.post_attention_layernorm(x + attn))
    np.testing.assert_allclose(np.array(trace.activations["model.layers.1.self_attn"]), np.array(attn), **TOL)
    np.testing.assert_allclose(np.array(trace.activations["model.layers.1.mlp"]), np.array(mlp), **TOL)


def test_saved_input_is_previous_block_output():
    model = wrap()
    with model.trace("hello") as trace:
        inp = model.layers[2].input.save()
        out = model.layers[1].output.save()
    np.testing.assert_array_equal(np.array(inp.value), np.array(out.value))
    assert "model.layers.2" in trace.inputs


def test_padded_batch_matches_single_runs_on_real_tokens():
    model = wrap()
    texts = ["hi", "a longer text"]
    with model.trace(texts) as trace:
        pass
    assert trace.mask.tolist()[0] == [1, 1] + [0] * (len(texts[1]) - 2)
    for row, text in enumerate(texts):
        with model.trace(text) as single:
            pass
        n = len(model.encode(text))
        np.testing.assert_allclose(
            np.array(trace.activations["model.layers.2"][row, :n]),
            np.array(single.activations["model.layers.2"][0]),
            **TOL,
        )


def test_token_id_inputs():
    model = wrap()
    ids = model.encode("hello")
    with model.trace(ids) as a:
        pass
    with model.trace(mx.array([ids])) as b:
        pass
    np.testing.assert_array_equal(np.array(a.activations["model.layers.0"]), np.array(b.activations["model.layers.0"]))


def test_zeroing_a_layer_changes_logits_and_noop_does_not():
    model = wrap()
    with model.trace("hello world") as clean:
        base = model.output.save()
    with model.trace("hello world"):
        model.layers[1].output.edit(lambda a: a)
        noop = model.output.save()
    with model.trace("hello world"):
        model.layers[1].mlp.output.zero()
        zeroed = model.output.save()
    np.testing.assert_array_equal(np.array(noop.value), np.array(base.value))
    assert float(mx.abs(zeroed.value - base.value).max()) > 1e-3
    assert clean.logits is base.value


@pytest.mark.parametrize(
    "declare, check",
    [
        (lambda p: p.scale(2.0), lambda before, after: np.allclose(after, 2 * before)),
        (lambda p: p.add(np.ones(D)), lambda before, after: np.allclose(after, before + 1)),
        (lambda p: p.set(np.full(D, 3.0)), lambda before, after: np.allclose(after, 3.0)),
        (lambda p: p.clamp(-0.1, 0.1), lambda before, after: np.allclose(after, np.clip(before, -0.1, 0.1))),
    ],
)
def test_edit_kinds(declare, check):
    model = wrap()
    with model.trace("abcdef") as clean:
        pass
    before = np.array(clean.activations["model.layers.0.mlp"])
    with model.trace("abcdef") as trace:
        declare(model.layers[0].mlp.output)
        saved = model.layers[0].mlp.output.save()
    assert check(before, np.array(saved.value))
    assert "model.layers.0.mlp" in trace.activations


def test_edit_at_positions_and_item_assignment():
    model = wrap()
    with model.trace("abcdef") as clean:
        pass
    before = np.array(clean.activations["model.layers.0"])
    with model.trace("abcdef"):
        model.layers[0].output.zero(positions=[1, -1])
        a = model.layers[0].output.save()
    after = np.array(a.value)
    assert np.all(after[:, [1, 5]] == 0)
    np.testing.assert_array_equal(after[:, [0, 2, 3, 4]], before[:, [0, 2, 3, 4]])
    with model.trace("abcdef"):
        model.layers[0].output[:, 2] = 7.0
        b = model.layers[0].output.save()
    assert np.all(np.array(b.value)[:, 2] == 7.0)
    with model.trace("abcdef"):
        model.layers[0].output = mx.zeros((D,))
        c = model.layers[0].output.save()
    assert float(mx.abs(c.value).max()) == 0.0


def test_only_requested_values_are_kept_and_forward_stops_early():
    model = wrap()
    last_mlp = model.model.model.layers[2].mlp
    calls = []

    def counting_mlp(x):
        calls.append(1)
        return last_mlp(x)

    model.model.model.layers[2]["mlp"] = counting_mlp
    with model.trace("hello") as trace:
        model.layers[1].output.save()
    assert set(trace.activations) == {"model.layers.1"}
    assert trace.logits is None
    assert calls == []
    with model.trace("hello"):
        model.output.save()
    assert calls == [1]


def test_hook_points_from_the_names_users_type():
    model = wrap("gpt2")
    assert model.hook_point(1, "attn") == HookPoint(1, "attn", "model.h.1.attn")
    assert model.hook_point(-1, "resid") == HookPoint(2, "output", "model.h.2")
    assert model.hook_point(0, "mlp").path == "model.h.0.mlp"
    assert model.hook_point(None, "model.h.1.mlp") == HookPoint(1, "mlp", "model.h.1.mlp")
    assert model.hook_point(None, "model.h.2") == HookPoint(2, "output", "model.h.2")
    assert model.hook_point(1, "model.h.1.attn").component == "attn"
    with pytest.raises(TraceError, match="not a hook point"):
        model.hook_point(0, "mpl")
    with pytest.raises(TraceError, match="not a hook point"):
        model.hook_point(None, "model.h.1.mlp.c_fc")
    with pytest.raises(TraceError, match="lies in layer 1, not layer 0"):
        model.hook_point(0, "model.h.1.mlp")
    with pytest.raises(TraceError, match="needs a layer"):
        model.hook_point(None, "mlp")


def test_modules_restored_even_when_forward_raises():
    model = wrap()
    originals = list(model.model.model.layers)
    with pytest.raises(ZeroDivisionError):
        with model.trace("hello"):
            model.layers[1].output.edit(lambda a: 1 / 0)
    assert list(model.model.model.layers) == originals
    assert all(type(layer).__name__ == "TransformerBlock" for layer in model.model.model.layers)
    with model.trace("hello") as trace:
        pass
    assert "model.layers.1" in trace.activations


def test_errors_are_clear():
    model = wrap()
    with pytest.raises(TraceError, match="out of range.*3 entries"):
        model.layers[3]
    with pytest.raises(TraceError, match="out of range.*3 layers"):
        model.hook_point(5)
    with pytest.raises(TraceError, match="Did you mean 'model.layers.0.mlp'"):
        model.module("model.layers.0.mpl")
    with pytest.raises(TraceError, match="no tokens"):
        model.trace("")
    with pytest.raises(TraceError, match="empty list"):
        model.trace([])
    with pytest.raises(TraceError, match="only available inside"):
        model.layers[0].output.save()
    with pytest.raises(TraceError, match="outside the vocabulary"):
        model.trace([0, 5000])
    with pytest.raises(AttributeError, match="Did you mean"):
        model.layers[0].mpl


def test_saved_value_before_exit_is_an_error():
    model = wrap()
    with model.trace("hi"):
        saved = model.layers[0].output.save()
        with pytest.raises(TraceError, match="not available yet"):
            saved.value
    assert saved.shape == (1, 2, D)


def test_reading_an_unsaved_module_says_what_was_saved_and_how_to_save_it():
    from mlxterp.errors import NotSavedError

    model = wrap()
    with model.trace("Hello") as trace:
        model.layers[0].mlp.output.save()
        model.output.save()
    message = (r"the output of 'model.layers.2' was not saved in this trace \(saved: 'model.layers.0.mlp', "
               r"the logits \(trace.logits\)\)\. Save it .* with `model.layers\[2\].output.save\(\)`, or save "
               r"nothing at all: a trace with nothing saved keeps every block's output, mlp and attn")
    with pytest.raises(NotSavedError, match=message):
        trace.activations["model.layers.2"]
    with pytest.raises(KeyError):  # still a KeyError for code that catches one
        trace.activations["model.layers.2"]
    with pytest.raises(NotSavedError, match=r"`model.module\('model.layers.1.self_attn'\).input.save\(\)`$"):
        trace.inputs["model.layers.1.self_attn"]
    with pytest.raises(NotSavedError, match=r"no module at path 'model.layers.0.mpl'. Did you mean 'model.layers.0.mlp'"):
        trace.activations["model.layers.0.mpl"]
    assert "model.layers.2" not in trace.activations and trace.activations.get("model.layers.2") is None
    assert trace.activations["model.layers.0.mlp"].shape == (1, 5, D)

    with model.generate("Hello", max_tokens=2) as gen:
        model.layers[1].output.save()
    with pytest.raises(NotSavedError, match=r"not saved in this generate \(saved: 'model.layers.1'\).*"
                                            r"`model.layers\[0\].output.save\(\)`$"):
        gen.activations["model.layers.0"]
