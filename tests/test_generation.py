"""generate(): greedy determinism, edits at every step with the KV cache, saved activations."""

import mlx.core as mx
import numpy as np
import pytest

from mlxterp import InterpretableModel
from mlxterp.errors import TraceError
from tiny_models import D, byte_tokenizer, tiny_model


@pytest.fixture(scope="module")
def model():
    return InterpretableModel((tiny_model("llama", seed=3), byte_tokenizer()))


def greedy_without_cache(model, prompt, n, edit=None):
    ids = model.encode(prompt)
    for _ in range(n):
        with model.trace(ids):
            if edit is not None:
                edit(model)
            logits = model.output.save()
        ids.append(int(mx.argmax(logits.value[0, -1]).item()))
    return ids[len(model.encode(prompt)):]


def steer(model):
    model.layers[1].output.add(mx.linspace(-3, 3, D))


def test_greedy_is_deterministic_and_matches_uncached_forward(model):
    first = model.generate("hello", max_tokens=6, stop_at_eos=False).tokens
    again = model.generate("hello", max_tokens=6, stop_at_eos=False).tokens
    assert first == again
    assert first == greedy_without_cache(model, "hello", 6)


def test_edit_applies_at_every_step(model):
    with model.generate("hello", max_tokens=6, stop_at_eos=False) as gen:
        steer(model)
        saved = model.layers[1].output.save()
    assert gen.tokens == greedy_without_cache(model, "hello", 6, edit=steer)
    assert gen.tokens != model.generate("hello", max_tokens=6, stop_at_eos=False).tokens
    # prompt forward plus one forward per new token but the last
    assert saved.shape == (1, len("hello") + 5, D)


def test_text_without_a_block_and_sampling_is_seeded(model):
    assert isinstance(model.generate("hi", max_tokens=3).text, str)
    a = model.generate("hi", max_tokens=5, temperature=1.0, seed=1, stop_at_eos=False).tokens
    b = model.generate("hi", max_tokens=5, temperature=1.0, seed=1, stop_at_eos=False).tokens
    assert a == b


def test_generation_errors(model):
    with pytest.raises(TraceError, match="non-empty prompt"):
        model.generate("")
    with pytest.raises(TraceError, match="max_tokens"):
        model.generate("hi", max_tokens=0)
    with pytest.raises(TraceError, match="already open"):
        with model.trace("a"):
            model.generate("b").__enter__()
