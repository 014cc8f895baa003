"""Attribution patching: its estimates track real activation patching, per-head estimates add
up to the attention output's, and integrated gradients are complete (a layer's estimates sum to
what patching the whole layer does)."""

import numpy as np
import pytest

from mlxterp import InterpretableModel
from mlxterp.attribution import attribution_patching, head_input
from mlxterp.errors import TraceError
from mlxterp.patching import activation_patching, logit_difference
from tiny_models import byte_tokenizer, tiny_model

CLEAN, CORRUPTED = ["abcdef", "uvwxyz"], ["abxdef", "uvqxyz"]


@pytest.fixture(scope="module")
def model():
    return InterpretableModel((tiny_model("llama", seed=1), byte_tokenizer()))


@pytest.fixture(scope="module")
def metric(model):
    return logit_difference(model, "a", "b")


@pytest.fixture(scope="module")
def linear(model, metric):
    return attribution_patching(model, CLEAN, CORRUPTED, metric=metric)


@pytest.mark.parametrize("component", ["output", "attn", "mlp"])
def test_linear_estimates_track_activation_patching(model, metric, linear, component):
    exact = activation_patching(model, CLEAN, CORRUPTED, metric=metric, component=component, per_position=True)
    estimate = linear.components[component]
    assert estimate.recovery.shape == exact.recovery.shape == (model.n_layers, 6)
    assert estimate.clean_metric == pytest.approx(exact.clean_metric, abs=1e-5)
    assert estimate.corrupted_metric == pytest.approx(exact.corrupted_metric, abs=1e-5)
    assert linear.correlation(exact) > 0.9
    # Positions before the first corrupted token differ in nothing: both say 0 there.
    np.testing.assert_allclose(estimate.recovery[:, :2], 0.0, atol=1e-6)


def test_heads_add_up_to_the_attention_output(model, linear):
    """o_proj is linear without bias: the per-head estimates sum to the attention output's."""
    _, n_heads = head_input(model, 0)
    assert linear.heads.shape == (model.n_layers, n_heads, 6)
    np.testing.assert_allclose(linear.heads.sum(axis=1), linear.components["attn"].recovery, rtol=1e-4, atol=1e-5)


def test_integrated_gradients_are_complete(model, metric):
    ig = attribution_patching(model, CLEAN, CORRUPTED, metric=metric, method="ig", steps=16, heads=False)
    # Patching a whole layer's residual stream restores the clean run: recovery 1.
    np.testing.assert_allclose(ig.components["output"].recovery.sum(axis=1), 1.0, atol=2e-3)
    whole = activation_patching(model, CLEAN, CORRUPTED, metric=metric, component="attn")
    np.testing.assert_allclose(ig.components["attn"].recovery.sum(axis=1), whole.recovery, atol=5e-3)


def test_attribution_errors(model, metric):
    with pytest.raises(TraceError, match="'linear' or 'ig'"):
        attribution_patching(model, CLEAN, CORRUPTED, metric=metric, method="exact")
    with pytest.raises(TraceError, match="positive int"):
        attribution_patching(model, CLEAN, CORRUPTED, metric=metric, method="ig", steps=0)
    with pytest.raises(TraceError, match="same number of tokens"):
        attribution_patching(model, "abc", "abcd")
    with pytest.raises(TraceError, match="undefined"):
        attribution_patching(model, "abc", "abc")
    with pytest.raises(TraceError, match="out of range"):
        attribution_patching(model, CLEAN, CORRUPTED, layers=[7])
    with pytest.raises(TraceError, match="unknown component"):
        attribution_patching(model, CLEAN, CORRUPTED, components=["mlpp"])
    exact = activation_patching(model, CLEAN, CORRUPTED, metric=metric)
    with pytest.raises(TraceError, match="per_position=True"):
        attribution_patching(model, CLEAN, CORRUPTED, metric=metric, heads=False).correlation(exact)


def test_one_trace_with_clean_and_corrupted_rows_is_activation_patching(model, metric):
    """Port.copy: copying row 0's activation into row 1 inside one forward gives row 1 what
    activation_patching's separate patched run gives."""
    exact = activation_patching(model, CLEAN[0], CORRUPTED[0], metric=metric, per_position=True)
    for layer, position in [(0, 2), (1, 5), (2, 5)]:
        with model.trace([CLEAN[0], CORRUPTED[0]]):
            model.layers[layer].output.copy(from_row=0, to_rows=1, positions=[position])
            logits = model.output.save()
        assert float(metric(logits.value[1:])) == pytest.approx(exact.patched_metric[layer, position], abs=1e-4)
        assert float(metric(logits.value[:1])) == pytest.approx(exact.clean_metric, abs=1e-4)


def test_copy_errors(model):
    with pytest.raises(TraceError, match="the batch has 2 rows"):
        with model.trace(["abc", "abd"]):
            model.layers[0].output.copy(from_row=0, to_rows=[1, 2])
    with pytest.raises(TraceError, match="needs int rows"):
        with model.trace(["abc", "abd"]):
            model.layers[0].output.copy(from_row=0, to_rows=[])
