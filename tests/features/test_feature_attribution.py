"""Feature attribution through spliced SAEs: the splice leaves the metric unchanged, integrated
gradients sum to the metric minus the metric with the SAE's codes zeroed, the linear estimate
equals finite differences on the codes, and ablating the top features moves the metric more
than ablating random active ones."""

import mlx.core as mx
import numpy as np
import pytest

from mlxterp.errors import SAEError
from mlxterp.features import splice_sae
from mlxterp.features.attribution import ablation_check, feature_attribution

TEXTS = ["The quick brown fox", "Sphinx of black qua"]  # same length: the metric reads position -1


def metric(logits):
    return (logits[:, -1, 10] - logits[:, -1, 20]).sum()


@pytest.fixture(scope="module")
def saes(tiny, make_sae):
    return [make_sae(tiny, layer=0, component="mlp"), make_sae(tiny, layer=1, seed=3)]


def run_metric(model, declare):
    with model.trace(TEXTS):
        declare()
        logits = model.output.save()
    return float(metric(logits.value))


def test_splicing_keeps_the_metric(tiny, saes):
    results = feature_attribution(tiny, TEXTS, saes, metric)
    assert [r.hook_point.path for r in results] == ["model.layers.0.mlp", "model.layers.1"]
    assert results[0].metric == pytest.approx(run_metric(tiny, lambda: None), abs=1e-4)
    assert results[0].codes.shape == results[0].attribution.shape == (2, len(TEXTS[0]), 128)
    # The first token is not spliced (default positions): no codes, no attribution there.
    assert np.all(results[1].codes[:, 0] == 0) and np.all(results[1].attribution[:, 0] == 0)


def test_integrated_gradients_sum_to_zeroing_every_code(tiny, saes):
    results = feature_attribution(tiny, TEXTS, saes, metric, method="ig", steps=32)
    for sae, result in zip(saes, results):
        def zero_codes():
            splice_sae(sae, tiny).codes.edit(mx.zeros_like)
        expected = result.metric - run_metric(tiny, zero_codes)
        assert abs(expected) > 1e-2
        assert result.attribution.sum() == pytest.approx(expected, rel=2e-3, abs=2e-3)


def test_linear_attribution_equals_finite_differences_on_codes(tiny, saes):
    sae = saes[1]
    result = feature_attribution(tiny, TEXTS, sae, metric)
    row, position, feature = np.unravel_index(np.argmax(np.abs(result.attribution)), result.attribution.shape)
    code = result.codes[row, position, feature]
    eps = 1e-2 * abs(code)

    def bumped(sign):
        def declare():
            def bump(c):
                out = mx.array(c)
                out[int(row), int(position), int(feature)] += sign * eps
                return out
            splice_sae(sae, tiny).codes.edit(bump)
        return run_metric(tiny, declare)

    gradient = (bumped(1) - bumped(-1)) / (2 * eps)
    assert result.attribution[row, position, feature] == pytest.approx(code * gradient, rel=5e-3)


def test_top_features_ablated_move_the_metric_more_than_random_ones(tiny, saes):
    sae = saes[1]
    result = feature_attribution(tiny, TEXTS, sae, metric)
    check = ablation_check(tiny, TEXTS, sae, result, metric, n=3, draws=5)
    assert check.top_features == [i for i, _ in result.top(3, signed=True)]
    assert abs(check.top_change) > max(abs(c) for c in check.random_changes)
    assert "ablating the top 3 features" in str(check)


def test_feature_attribution_errors(tiny, saes, make_sae):
    with pytest.raises(SAEError, match="same hook point"):
        feature_attribution(tiny, TEXTS, [saes[1], make_sae(tiny, layer=1, seed=9)], metric)
    with pytest.raises(SAEError, match="'linear' or 'ig'"):
        feature_attribution(tiny, TEXTS, saes, metric, method="exact")
    with pytest.raises(SAEError, match="at least one SAE"):
        feature_attribution(tiny, TEXTS, [], metric)
    result = feature_attribution(tiny, TEXTS, saes[1], metric)
    with pytest.raises(SAEError, match="fewer than n=500"):
        ablation_check(tiny, TEXTS, saes[1], result, metric, n=500)
    with pytest.raises(SAEError, match="already spliced"):
        with tiny.trace(TEXTS):
            splice_sae(saes[1], tiny)
            splice_sae(saes[1], tiny)
