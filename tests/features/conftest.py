"""Fixtures for feature tests: a tiny random model with a random SAE on it, and SmolLM2 with an SAE."""

import mlx.core as mx
import pytest

from mlxterp import InterpretableModel
from mlxterp.sae.model import SAE
from tiny_models import byte_tokenizer, tiny_model

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Sphinx of black quartz, judge my vow!",
    "Pack my box with five dozen liquor jugs. " * 3,
    "How vexingly quick daft zebras jump.",
    "a",
]


def random_sae(model, layer=1, component="output", d_hidden=128, k=8, seed=0, **kwargs):
    """An untrained SAE on `model`'s (layer, component), attached to it."""
    sae = SAE(model.d_model, d_hidden, k=k, seed=seed, **kwargs)
    sae.b_enc = mx.random.normal((d_hidden,), key=mx.random.key(seed + 1)) * 0.1
    sae.metadata.update(layer=layer, component=component, model_name=model.name)
    sae.attached_model = model
    return sae


@pytest.fixture(scope="module")
def tiny():
    return InterpretableModel((tiny_model("llama"), byte_tokenizer()))


@pytest.fixture(scope="module")
def tiny_sae(tiny):
    return random_sae(tiny)


@pytest.fixture
def texts():
    return list(TEXTS)


@pytest.fixture(scope="session")
def make_sae():
    """`make_sae(model, layer=1, component="output", d_hidden=128, k=8, seed=0, **SAE kwargs)`."""
    return random_sae
