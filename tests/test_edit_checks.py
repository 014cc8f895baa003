"""Edits that would do nothing or the wrong thing fail loudly, naming the module and the edit."""

import warnings

import mlx.core as mx
import numpy as np
import pytest

from mlxterp import InterpretableModel
from mlxterp.errors import ContextLengthWarning, TraceError
from tiny_models import byte_tokenizer, tiny_model

PROMPT = "Hello"  # 5 byte tokens


@pytest.fixture(scope="module")
def model():
    return InterpretableModel((tiny_model("llama"), byte_tokenizer()))


def run_edit(model, declare, text=PROMPT):
    with model.trace(text) as trace:
        declare()
        model.output.save()
    return trace.logits


@pytest.mark.parametrize("positions", [[50], 5, [0, 5], -6, [2.0], [True], []])
def test_positions_outside_the_sequence_or_not_ints_are_refused(model, positions):
    with pytest.raises(TraceError, match=r"zero\(\) of model\.layers\.1\.output") as info:
        run_edit(model, lambda: model.layers[1].output.zero(positions=positions))
    assert "positions" in str(info.value)


def test_positions_at_the_edges_still_edit(model):
    clean = run_edit(model, lambda: None)
    for positions in ([4], -5, np.array([0, 4]), range(2, 4)):
        edited = run_edit(model, lambda: model.layers[1].output.zero(positions=positions))
        assert not np.allclose(np.array(edited), np.array(clean)), positions


@pytest.mark.parametrize("fn, message", [
    (lambda a: a[:, :1], r"returned shape \(1, 1, 64\) for a value of shape \(1, 5, 64\)"),
    (lambda a: None, r"returned NoneType, not an array"),
    (lambda a: np.array(a), r"returned ndarray, not an array"),
    (lambda a: a.astype(mx.float16), r"returned mlx.core.float16 for a mlx.core.float32 value"),
    (lambda a: a[0], r"returned shape \(5, 64\)"),
])
def test_an_edit_must_return_an_array_of_the_same_shape_and_dtype(model, fn, message):
    with pytest.raises(TraceError, match=r"edit\(<lambda>\) of model\.layers\.1\.mlp\.output " + message):
        run_edit(model, lambda: model.layers[1].mlp.output.edit(fn))
    # Also on the tokens chosen by `positions`: the function sees (batch, n_positions, d).
    with pytest.raises(TraceError, match=r"returned shape \(1, 1, 64\) for a value of shape \(1, 2, 64\)"):
        run_edit(model, lambda: model.layers[1].output.edit(lambda a: a[:, :1], positions=[1, 2]))


def test_named_port_edits_name_themselves(model):
    with pytest.raises(TraceError, match=r"the edit scale\(2\.0\) of model\.layers\.0\.output would do nothing at positions \[9\]"):
        run_edit(model, lambda: model.layers[0].output.scale(2.0, positions=9))


@pytest.mark.parametrize("call, message", [
    (lambda port: port.scale(float("nan")), r"scale of model\.layers\.1\.output got factor=nan"),
    (lambda port: port.scale(float("inf")), r"factor=inf"),
    (lambda port: port.clamp(min=2, max=1), r"clamp of model\.layers\.1\.output has min=2 above max=1"),
    (lambda port: port.clamp(), r"clamp of model\.layers\.1\.output needs min=, max= or both"),
    (lambda port: port.clamp(max=float("nan")), r"got max=nan"),
])
def test_bad_strengths_and_bounds_are_refused_when_declared(model, call, message):
    with pytest.raises(TraceError, match=message):
        with model.trace(PROMPT):
            call(model.layers[1].output)


def test_clamp_with_valid_bounds_still_clips(model):
    with model.trace(PROMPT) as trace:
        model.layers[1].output.clamp(min=-0.1, max=0.1)
        out = model.layers[1].output.save()
    assert float(mx.max(mx.abs(out.value))) <= 0.1 + 1e-7


def test_generation_positions_follow_the_steps(model):
    baseline = model.generate(PROMPT, max_tokens=6).tokens
    # Position 6 is fed at the third step: the first two new tokens cannot change, later ones may.
    with model.generate(PROMPT, max_tokens=6) as gen:
        model.layers[0].output.zero(positions=[6])
    assert gen.tokens[:2] == baseline[:2] and gen.tokens != baseline
    with model.generate(PROMPT, max_tokens=6) as gen:
        model.layers[0].output.zero(positions=-1)  # every step's newest token, not an error
    assert gen.tokens != baseline
    # 5 prompt tokens + 6 steps feed positions 0..9 (the last new token is never fed back).
    with pytest.raises(TraceError, match=r"positions \[10\]: the prompt has 5 tokens and generation runs 10"):
        with model.generate(PROMPT, max_tokens=6):
            model.layers[0].output.zero(positions=[10])
    with pytest.raises(TraceError, match=r"positions \[-6\].*at most -5"):
        with model.generate(PROMPT, max_tokens=6):
            model.layers[0].output.zero(positions=-6)


# -- inputs ---------------------------------------------------------------------------------

@pytest.mark.parametrize("inputs, message", [
    (mx.array([[72.0, 101.7]]), r"token ids must be an integer array, got mlx.core.float32: float ids would be truncated"),
    (np.array([72.0, 101.0]), r"integer array, got float64"),
    ([[72, 101.7]], r"token ids must be integers, got 101.7 \(float\)"),
    ([72.0, 101.0], r"token ids must be integers, got 72.0 \(float\)"),
    ([True, False], r"token ids must be integers, got True \(bool\)"),
    (mx.zeros((1, 5, 64), dtype=mx.int32), r"shape \(seq,\) or \(batch, seq\), got shape \(1, 5, 64\)"),
    (mx.array(3), r"got shape \(\)"),
])
def test_token_ids_that_would_be_taken_wrongly_are_refused(model, inputs, message):
    with pytest.raises(TraceError, match=message):
        model.tokenize_batch(inputs)


def test_integer_arrays_are_taken_as_they_are(model):
    tokens, _ = model.tokenize_batch(np.array([[72, 101], [1, 2]], dtype=np.int64))
    assert tokens.tolist() == [[72, 101], [1, 2]] and tokens.dtype == mx.int32


def test_inputs_past_the_context_length_warn():
    qwen = InterpretableModel((tiny_model("qwen3"), byte_tokenizer()))  # max_position_embeddings=512
    assert qwen.context_length == 512
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        qwen.tokenize_batch("a" * 512)
    with pytest.warns(ContextLengthWarning, match=r"runs 513 tokens, past .*context of 512"):
        qwen.tokenize_batch(["short", "a" * 513])
    with pytest.warns(ContextLengthWarning, match=r"generation \(prompt \+ max_tokens\) runs 513 tokens"):
        qwen.generate("a" * 510, max_tokens=3).tokens


@pytest.mark.slow
def test_the_default_models_context_is_read_from_its_args(default_model_pair):
    model = InterpretableModel((default_model_pair.model, default_model_pair.tokenizer))
    assert model.context_length == 8192
    with pytest.warns(ContextLengthWarning, match="8192"):
        model.tokenize_batch(list(range(8193)))
