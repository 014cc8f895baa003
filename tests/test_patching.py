"""Activation patching: recovery is 1 where the patch restores the clean run, 0 where it can't."""

import numpy as np
import pytest

from mlxterp import InterpretableModel
from mlxterp.errors import TraceError
from mlxterp.patching import activation_patching, logit_difference
from tiny_models import byte_tokenizer, tiny_model


@pytest.fixture(scope="module")
def model():
    return InterpretableModel((tiny_model("llama", seed=1), byte_tokenizer()))


def test_residual_patching_restores_the_clean_run(model):
    result = activation_patching(model, "abcd", "abxd")
    np.testing.assert_allclose(result.recovery, 1.0, atol=1e-4)
    assert result.clean_metric != result.corrupted_metric


def test_per_position_patching_localises_the_effect(model):
    result = activation_patching(model, "abcd", "abxd", per_position=True, metric=logit_difference(model, "a", "b"))
    last_layer = result.recovery[-1]
    # Only the last position's final residual reaches the last position's logits.
    assert last_layer[-1] == pytest.approx(1.0, abs=1e-4)
    np.testing.assert_allclose(last_layer[:-1], 0.0, atol=1e-4)
    # Before the corrupted token (position 2) nothing differs, so patching there does nothing.
    np.testing.assert_allclose(result.recovery[:, :2], 0.0, atol=1e-4)
    assert result.best_layer() in range(model.n_layers)


def test_mlp_patching_is_partial(model):
    result = activation_patching(model, "abcd", "abxd", component="mlp")
    assert result.recovery.shape == (model.n_layers,)
    assert np.all(np.isfinite(result.recovery))


def test_patching_errors(model):
    with pytest.raises(TraceError, match="same number of tokens"):
        activation_patching(model, "abc", "abcd")
    with pytest.raises(TraceError, match="undefined"):
        activation_patching(model, "abc", "abc")
    with pytest.raises(TraceError, match="out of range"):
        activation_patching(model, "abc", "abd", layers=[9])


def test_patching_chosen_positions_and_prompt_lists(model):
    full = activation_patching(model, ["abcd", "wxyz"], ["abxd", "wxqz"], per_position=True)
    chosen = activation_patching(model, ["abcd", "wxyz"], ["abxd", "wxqz"], per_position=[3, 2])
    np.testing.assert_allclose(chosen.recovery, full.recovery[:, [3, 2]], atol=1e-5)
    with pytest.raises(TraceError, match="list of positions of the 4 tokens"):
        activation_patching(model, "abcd", "abxd", per_position=[4])
    with pytest.raises(TraceError, match="list of positions"):
        activation_patching(model, "abcd", "abxd", per_position=[])
    with pytest.raises(TraceError, match="same number of tokens"):
        activation_patching(model, ["abcd", "wxyz"], ["abxd"])
