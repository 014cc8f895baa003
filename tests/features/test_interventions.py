"""Edits through an SAE: splicing with and without the error term, feature edits, steering."""

import mlx.core as mx
import numpy as np
import pytest

from mlxterp.errors import SAEError, TraceError
from mlxterp.features import ablate, clamp, compare_generations, feature_directions, scale, set_value, splice_sae, steer
from tiny_models import midway_norm

PROMPT = "The quick brown fox"


def clean_run(model, sae):
    path = model.hook_point(1, "output").path
    with model.trace(PROMPT) as trace:
        hidden = model.module(path).output.save()
        logits = model.output.save()
    return np.array(hidden.value), np.array(logits.value), trace


def edited_run(model, sae, declare):
    path = model.hook_point(1, "output").path
    with model.trace(PROMPT):
        declare()
        hidden = model.module(path).output.save()
        logits = model.output.save()
    return np.array(hidden.value), np.array(logits.value)


def test_splice_with_error_term_reproduces_clean_logits_exactly(tiny, tiny_sae):
    _, clean, _ = clean_run(tiny, tiny_sae)
    _, spliced = edited_run(tiny, tiny_sae, lambda: splice_sae(tiny_sae, tiny))
    np.testing.assert_array_equal(spliced, clean)


def test_splice_without_error_term_replaces_the_activation_by_the_reconstruction(tiny, tiny_sae):
    x, clean, _ = clean_run(tiny, tiny_sae)
    hidden, logits = edited_run(tiny, tiny_sae, lambda: splice_sae(tiny_sae, tiny, error_term=False))
    np.testing.assert_array_equal(hidden[:, 0], x[:, 0])  # the attention sink is left alone
    np.testing.assert_allclose(hidden[:, 1:], np.array(tiny_sae(mx.array(x[:, 1:]))), atol=1e-5)
    assert np.abs(logits - clean).max() > 1e-2


def test_splices_leave_tokens_above_the_norm_limit_alone(tiny, make_sae):
    sae = make_sae(tiny)
    x, _, _ = clean_run(tiny, sae)
    norms = np.linalg.norm(x[0], axis=-1)
    sae.metadata["max_token_norm"] = midway_norm(norms[1:])
    above = norms > sae.metadata["max_token_norm"]
    assert above[1:].any() and not above[1:].all()
    hidden, _ = edited_run(tiny, sae, lambda: splice_sae(sae, tiny, error_term=False))
    np.testing.assert_array_equal(hidden[0, above], x[0, above])
    np.testing.assert_allclose(hidden[0, ~above][1:], np.array(sae(mx.array(x[0, ~above][1:]))), atol=1e-5)
    assert np.array(sae.within_norm_limit(mx.array(x[0]))).tolist() == (~above).tolist()


def expected_after(sae, x, edit_codes):
    """x plus the change in the reconstruction when the codes are edited by `edit_codes`."""
    codes = np.array(sae.encode(mx.array(x)))
    edited = edit_codes(codes.copy())
    return x + np.array(sae.decode(mx.array(edited)) - sae.decode(mx.array(codes))), codes


def test_ablating_a_feature_removes_its_contribution(tiny, tiny_sae):
    x, clean, _ = clean_run(tiny, tiny_sae)
    codes = np.array(tiny_sae.encode(mx.array(x)))[0]
    feature = int(np.argmax(codes[1:].max(0)))  # the strongest feature after the sink
    hidden, logits = edited_run(tiny, tiny_sae, lambda: splice_sae(tiny_sae, tiny, ablate(feature)))
    direction = np.array(feature_directions(tiny_sae, [feature])[0])
    expected = x[0, 1:] - codes[1:, feature, None] * direction
    np.testing.assert_allclose(hidden[0, 1:], expected, atol=1e-5)
    np.testing.assert_array_equal(hidden[0, 0], x[0, 0])
    assert np.abs(logits - clean).max() > 1e-3
    re_encoded = np.array(tiny_sae.encode(mx.array(hidden[0, 1:])))
    active = codes[1:, feature] > 0
    assert active.any()
    assert (re_encoded[active, feature] < 0.5 * codes[1:, feature][active]).all()


@pytest.mark.parametrize("make_edit, edit_codes", [
    (lambda f: scale(f, 3.0), lambda c, f: c.__setitem__((..., f), c[..., f] * 3.0) or c),
    (lambda f: set_value(f, 2.0), lambda c, f: c.__setitem__((..., f), 2.0) or c),
    (lambda f: clamp(f, max=0.1), lambda c, f: c.__setitem__((..., f), np.minimum(c[..., f], 0.1)) or c),
])
def test_scale_set_and_clamp_edit_the_codes(tiny, tiny_sae, make_edit, edit_codes):
    x, _, _ = clean_run(tiny, tiny_sae)
    features = [3, 40]
    hidden, _ = edited_run(tiny, tiny_sae, lambda: splice_sae(tiny_sae, tiny, make_edit(features)))
    expected, _ = expected_after(tiny_sae, x[:, 1:], lambda c: edit_codes(c, features))
    np.testing.assert_allclose(hidden[:, 1:], expected, atol=1e-5)


def test_steer_in_a_trace_adds_the_feature_direction(tiny, tiny_sae):
    x, clean, _ = clean_run(tiny, tiny_sae)
    with tiny.trace(PROMPT):  # seed 003's form
        tiny_sae.steer(model=tiny, layer=1, feature_idx=12, strength=4.0)
        hidden = tiny.layers[1].output.save()
        output = tiny.output.save()
    direction = np.array(feature_directions(tiny_sae, [12])[0])
    np.testing.assert_allclose(np.array(hidden.value), x + 4.0 * direction, atol=1e-5)
    assert np.abs(np.array(output.value) - clean).max() > 1e-2
    hidden2, _ = edited_run(tiny, tiny_sae, lambda: steer(tiny_sae, None, feature_idx=[12, 12], strength=[1.0, 3.0]))
    np.testing.assert_allclose(hidden2, np.array(hidden.value), atol=1e-5)


def test_steer_in_generate_changes_the_text_and_compare_shows_both(tiny, tiny_sae):
    baseline = tiny.generate(PROMPT, max_tokens=8)
    with tiny.generate(PROMPT, max_tokens=8) as gen:
        tiny_sae.steer(tiny, layer=1, feature_idx=12, strength=30.0)
    assert gen.tokens != baseline.tokens
    comparison = compare_generations(tiny, PROMPT, lambda: steer(tiny_sae, tiny, feature_idx=12, strength=30.0), max_tokens=8)
    assert (comparison.baseline_tokens, comparison.edited_tokens) == (baseline.tokens, gen.tokens)
    assert (comparison.baseline, comparison.edited) == (baseline.text, gen.text)
    assert repr(baseline.text) in str(comparison) and repr(gen.text) in str(comparison)
    spliced = compare_generations(tiny, PROMPT, lambda: splice_sae(tiny_sae, tiny), max_tokens=8)
    assert spliced.edited_tokens == spliced.baseline_tokens


def test_intervention_errors(tiny, tiny_sae):
    with tiny.trace(PROMPT):
        with pytest.raises(SAEError, match="trained on layer 1 .*not layer 2"):
            tiny_sae.steer(tiny, layer=2, feature_idx=3)
        with pytest.raises(SAEError, match="feature 500 does not exist"):
            tiny_sae.steer(tiny, feature_idx=500)
        with pytest.raises(SAEError, match="2 strengths for 3 features"):
            steer(tiny_sae, tiny, feature_idx=[1, 2, 3], strength=[1.0, 2.0])
        with pytest.raises(SAEError, match="needs feature_idx"):
            steer(tiny_sae, tiny)
        with pytest.raises(SAEError, match="feature 128 does not exist"):
            splice_sae(tiny_sae, tiny, ablate(128))
        with pytest.raises(SAEError, match="min=, max="):
            clamp(3)
    with pytest.raises(TraceError, match="only available inside"):
        steer(tiny_sae, tiny, feature_idx=3)
    with pytest.raises(TraceError, match="edit_fn must be a function"):
        compare_generations(tiny, PROMPT, "steer")
