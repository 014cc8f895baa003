"""Max-activating examples: the one-pass, all-features search equals a brute-force search per feature."""

import mlx.core as mx
import numpy as np
import pytest

from mlxterp.activations import ContextSettings
from mlxterp.errors import DataError, SAEError
from mlxterp.features import get_top_activating_texts, top_activating_examples
from mlxterp.features.examples import TopPerFeature
from mlxterp.features.scan import CodeBatch
from mlxterp.fast_forward import numpy_exp_forward

SCAN = dict(contexts=ContextSettings(context_length=32), contexts_per_forward=2, n_tokens=None)


def all_codes(sae, model, contexts, batch_size):
    """(n_contexts * length, d_hidden) codes of every scanned position (0 elsewhere), batched and
    computed like the scan (whose forward runs inside `numpy_exp_forward`)."""
    path = model.hook_point(sae.metadata["layer"], sae.metadata["component"]).path
    parts = []
    for start in range(0, len(contexts.tokens), batch_size):
        with numpy_exp_forward(model.model), model.trace(mx.array(contexts.tokens[start : start + batch_size]),
                                                        default_capture=False):
            saved = model.module(path).output.save()
        parts.append(np.array(sae.encode(saved.value.astype(mx.float32))).reshape(-1, sae.d_hidden))
    return np.concatenate(parts) * contexts.keep.reshape(-1, 1)


@pytest.fixture(scope="module")
def scanned(tiny, tiny_sae):
    from conftest import TEXTS

    found = top_activating_examples(tiny_sae, tiny, TEXTS, top_k=4, window=(3, 2), **SCAN)
    return found, all_codes(tiny_sae, tiny, found.contexts, SCAN["contexts_per_forward"])


def test_batch_top_examples_equal_brute_force_per_feature(scanned, tiny_sae):
    found, codes = scanned
    assert len(found) == tiny_sae.d_hidden
    checked = 0
    for feature in range(tiny_sae.d_hidden):
        column = codes[:, feature]
        expected = np.sort(column[column > 0])[::-1][:4]
        got = [e.max_activation for e in found[feature].top]
        np.testing.assert_array_equal(np.float32(got), expected.astype(np.float32))
        checked += len(got)
    assert checked > 2 * tiny_sae.d_hidden  # most features fire several times: the merge is exercised


def test_example_window_holds_the_features_activations_around_its_peak(scanned, tiny, tiny_sae):
    found, codes = scanned
    contexts = found.contexts
    length = contexts.length
    for feature in (0, 5, 77):
        column = codes[:, feature]
        for example, token in zip(found[feature].top, np.argsort(-column, kind="stable")):
            context, position = divmod(int(token), length)
            assert example.tokens[example.peak] == tiny.tokenizer.decode([int(contexts.tokens[context, position])])
            assert example.activations[example.peak] == example.max_activation == column[token]
            start = position - example.peak
            doc = contexts.docs[context, position]
            window = np.arange(start, start + len(example.tokens))
            assert (contexts.docs[context, window] == doc).all()  # never crosses into another document
            np.testing.assert_array_equal(np.float32(example.activations), column[context * length + window])
            assert example.peak <= 3 and len(example.tokens) - example.peak - 1 <= 2


def test_band_examples_lie_in_their_band_and_below_the_top(scanned):
    found, _ = scanned
    seen = 0
    for feature in range(len(found)):
        examples = found[feature]
        if not examples.top:
            assert examples.bands == []
            continue
        peak = examples.top[0].max_activation
        top_values = {e.max_activation for e in examples.top}
        for (label, band), (low, high) in zip(examples.bands, [(0.5, 0.75), (0.25, 0.5), (0.0, 0.25)]):
            assert label == f"{low:.0%}–{high:.0%} of max"
            for e in band:
                assert low * peak < e.max_activation <= high * peak
                assert e.max_activation not in top_values
                seen += 1
    assert seen > 0


def test_single_feature_search_matches_the_batch_search(scanned, tiny, tiny_sae, texts):
    found, _ = scanned
    feature = max(range(len(found)), key=lambda f: found[f].top[-1].max_activation if len(found[f].top) == 4 else 0)
    single = get_top_activating_texts(tiny_sae, feature, texts, top_k=4, model=tiny, window=(3, 2), **SCAN)
    assert len(single) == 4
    assert [e.max_activation for e in single] == [e.max_activation for e in found[feature].top]
    assert [e.text for e in single] == [e.text for e in found[feature].top]
    method = tiny_sae.get_top_activating_texts(feature, texts, top_k=2, window=(3, 2), **SCAN)  # attached model
    assert [e.text for e in method] == [e.text for e in single][:2]
    assert "[[" in str(method)  # the peak token is marked


def test_n_tokens_caps_the_scan_and_first_positions_are_never_examples(tiny, tiny_sae, texts):
    found = top_activating_examples(tiny_sae, tiny, texts, top_k=50, contexts=ContextSettings(context_length=32), n_tokens=40)
    assert found.contexts.n_tokens == 40
    assert not found.contexts.keep[:, 0].any()
    peaks = sum(len(found[f].top) for f in range(tiny_sae.d_hidden))
    assert peaks == 40 * tiny_sae.k  # every (token, active feature) pair kept, nothing more


def test_merge_of_many_batches_keeps_exactly_the_top_k():
    rng = np.random.default_rng(0)
    n_features, k, length, rows = 7, 5, 10, 40
    store = TopPerFeature(n_features, k, before=2, after=1)
    everything = []
    for b in range(12):
        codes = np.where(rng.random((rows, n_features)) < 0.3, rng.random((rows, n_features)), 0).astype(np.float32)
        row, feature = np.nonzero(codes)
        batch = CodeBatch(codes, b * rows, length, row, feature.astype(np.int64), codes[row, feature], rows)
        store.offer(batch, batch.value)
        everything.append(codes)
    codes = np.concatenate(everything)
    for f in range(n_features):
        best = np.argsort(-codes[:, f], kind="stable")[:k]
        slots = store.ranked(f)
        np.testing.assert_array_equal(store.token[f, slots], best)
        np.testing.assert_array_equal(store.value[f, slots], codes[best, f])
        token = best[0]
        context_start = token // length * length
        window = [codes[t, f] if context_start <= t < context_start + length else np.nan for t in range(token - 2, token + 2)]
        np.testing.assert_array_equal(store.window[f, slots[0]], np.float32(window))


def test_bad_inputs_raise_clear_errors(tiny, tiny_sae, make_sae, texts):
    with pytest.raises(SAEError, match="feature 128 does not exist.*valid indices 0..127"):
        get_top_activating_texts(tiny_sae, 128, texts)
    with pytest.raises(SAEError, match="one int"):
        get_top_activating_texts(tiny_sae, [1, 2], texts)
    with pytest.raises(DataError, match="no text"):
        top_activating_examples(tiny_sae, tiny, [])
    with pytest.raises(DataError, match="no usable token"):
        top_activating_examples(tiny_sae, tiny, ["a"], contexts=ContextSettings(context_length=4))
    detached = make_sae(tiny)
    del detached.attached_model
    with pytest.raises(SAEError, match="not attached to a model"):
        get_top_activating_texts(detached, 0, texts)
    other_layer = make_sae(tiny, layer=None)
    with pytest.raises(SAEError, match="names no hook point"):
        top_activating_examples(other_layer, tiny, texts)
