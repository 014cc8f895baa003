"""An activation cache is read only for the activations it holds: another model (same name, other
weights), layer or settings is refused, never mixed in."""

import shutil

import numpy as np
import pytest

from mlxterp import InterpretableModel
from mlxterp.activations import ActivationStore, ContextSettings
from mlxterp.errors import DataError
from tiny_models import byte_tokenizer, tiny_model

TEXTS = [f"document number {i}: " + "some words here " * (3 + i % 5) for i in range(12)]
SETTINGS = ContextSettings(context_length=32)


def store(model, layer, cache_dir):
    return ActivationStore(model, TEXTS, model.hook_point(layer, "mlp"), SETTINGS, cache_dir=cache_dir, progress=False)


def test_a_cache_of_other_weights_under_the_same_name_is_refused(tmp_path):
    first = InterpretableModel((tiny_model("llama", seed=0), byte_tokenizer()))
    second = InterpretableModel((tiny_model("llama", seed=1), byte_tokenizer()))
    assert first.name == second.name and first.fingerprint != second.fingerprint
    written = np.concatenate([np.array(b) for b in store(first, 1, tmp_path).batches(64)])
    again = store(first, 1, tmp_path)
    assert again.cache_dir == store(second, 1, tmp_path).cache_dir  # the folder name cannot tell them apart
    assert np.concatenate([np.array(b) for b in again.batches(64)]).shape == written.shape
    with pytest.raises(DataError, match="written for other activations: model_fingerprint"):
        next(store(second, 1, tmp_path).batches(64))
    with pytest.raises(DataError, match="delete that folder"):
        store(second, 1, tmp_path).sample(10)


def test_a_cache_folder_moved_under_another_layer_is_refused(tmp_path):
    model = InterpretableModel((tiny_model("llama", seed=0), byte_tokenizer()))
    layer1 = store(model, 1, tmp_path)
    list(layer1.batches(64))
    layer2 = store(model, 2, tmp_path)
    shutil.copytree(layer1.cache_dir, layer2.cache_dir)
    with pytest.raises(DataError, match=r"hook .*layers\.1.*this run: .*layers\.2"):
        list(layer2.batches(64))
