"""Activation store: packing, token filtering, shuffling, bounded memory, disk cache, errors."""

import mlx.core as mx
import numpy as np
import pytest

from mlxterp import InterpretableModel
from mlxterp.errors import DataError, TraceError
from mlxterp.activations import ActivationStore, ContextSettings, norm_limit, within_limit
from mlxterp.data import split_documents
from tiny_models import D, byte_tokenizer, tiny_model

TEXTS = [f"document number {i}: " + "some words here " * (3 + i % 5) for i in range(40)]


@pytest.fixture(scope="module")
def model():
    return InterpretableModel((tiny_model("llama", seed=2), byte_tokenizer()))


def where(model, layer=1, context_length=32):
    """(hook point, context settings) of the store under test."""
    return model.hook_point(layer, "mlp"), ContextSettings(context_length=context_length)


def test_batches_cover_exactly_the_kept_tokens(model):
    store = ActivationStore(model, TEXTS, *where(model), progress=False)
    eos = model.pad_token_id
    n_contexts = len(store.contexts)
    expected = n_contexts * 31 - int((store.contexts[:, 1:] == eos).sum())
    assert store.n_tokens == expected
    batches = list(store.batches(64))
    assert sum(len(b) for b in batches) == expected
    assert all(b.shape[1] == D and b.dtype == mx.float32 for b in batches)


def test_activations_equal_trace_values_at_kept_positions(model):
    store = ActivationStore(model, TEXTS, *where(model), progress=False)
    with model.trace(mx.array(store.contexts[:2])) as trace:
        pass
    acts = np.array(trace.activations["model.layers.1.mlp"])
    expected = acts[store.keep[:2]]
    assert not store.keep[:, 0].any()
    all_rows = np.concatenate([np.array(b) for b in store.batches(50)])
    # every expected row appears among the store's shuffled rows
    found = (np.abs(all_rows[None, :, :] - expected[:, None, :]).max(-1) < 1e-5).any(1)
    assert found.all()


def test_shuffle_mixes_contexts_and_differs_between_epochs(model):
    store = ActivationStore(model, TEXTS, *where(model), progress=False, shuffle_buffer_tokens=256)
    first = np.array(next(store.batches(32)))
    second = np.array(next(store.batches(32)))
    assert not np.allclose(first, second)


def test_cache_is_written_then_read_without_the_model(model, tmp_path, monkeypatch):
    store = ActivationStore(model, TEXTS, *where(model), cache_dir=tmp_path, progress=False)
    first = np.concatenate([np.array(b) for b in store.batches(64)])
    assert (store.cache_dir / "manifest.json").exists()

    def no_model(*a, **k):
        raise AssertionError("the model ran although the cache is complete")

    monkeypatch.setattr(model, "trace", no_model)
    again = ActivationStore(model, TEXTS, *where(model), cache_dir=tmp_path, progress=False)
    second = np.concatenate([np.array(b) for b in again.batches(64)])
    assert first.shape == second.shape
    np.testing.assert_allclose(np.sort(first.sum(1)), np.sort(second.sum(1)), rtol=1e-5)


def test_a_text_shorter_than_a_context_is_padded_not_lost(model):
    store = ActivationStore(model, ["short"], *where(model), progress=False)
    ids = model.encode("short")
    assert store.contexts.shape == (1, 32)
    assert store.n_tokens == len(ids) - 1  # all but the first position; padding never counts
    assert sum(len(b) for b in store.batches(8)) == store.n_tokens


def test_max_tokens_bounds_the_epoch(model):
    store = ActivationStore(model, TEXTS, *where(model), max_tokens=100, progress=False)
    assert sum(len(b) for b in store.batches(16)) == 100


def test_validation_split_holds_out_documents():
    train, val = split_documents(TEXTS, 0.1, seed=0)
    assert len(val) == 4 and not set(train) & set(val)
    assert sorted(train + val) == sorted(TEXTS)
    one_train, one_val = split_documents(["para one\npara two\npara three"], 0.3, seed=0)
    assert one_train and one_val


def test_store_errors(model):
    with pytest.raises(DataError, match="empty"):
        ActivationStore(model, [], *where(model))
    with pytest.raises(TraceError, match="out of range"):
        ActivationStore(model, TEXTS, *where(model, layer=7))
    eos = model.tokenizer.decode([model.pad_token_id])
    with pytest.raises(DataError, match="no usable token"):
        ActivationStore(model, [eos * 200], *where(model))
    with pytest.raises(DataError, match="empty"):
        split_documents(["", "  "], 0.1, seed=0)


def test_norm_limit_is_the_ratio_times_the_median_norm():
    sample = np.zeros((5, 4), dtype=np.float32)
    sample[:, 0] = [1.0, 2.0, 3.0, 4.0, 500.0]
    assert norm_limit(sample, 10.0) == pytest.approx(30.0)
    assert norm_limit(sample, None) is None
    assert within_limit(sample, 30.0).tolist() == [True, True, True, True, False]
    with pytest.raises(DataError, match="empty sample"):
        norm_limit(np.zeros((0, 4), dtype=np.float32), 10.0)


def test_max_token_norm_drops_exactly_the_larger_tokens(model, tmp_path):
    store = ActivationStore(model, TEXTS, *where(model), cache_dir=tmp_path, progress=False)
    every = np.concatenate(list(store.chunks()))
    limit = float(np.median(np.linalg.norm(every, axis=1)))
    store.max_token_norm = limit
    served = np.concatenate([np.array(b) for b in store.batches(64)])  # read from the cache
    assert len(served) == int((np.linalg.norm(every, axis=1) <= limit).sum()) < len(every)
    assert np.linalg.norm(served, axis=1).max() <= limit
    assert len(np.asarray(store.sample(10_000))) == len(every)  # the sample ignores the limit


def test_cached_rows_name_the_context_and_position_of_each_activation(model, tmp_path):
    store = ActivationStore(model, TEXTS, *where(model), cache_dir=tmp_path, progress=False,
                            shuffle_buffer_tokens=256)
    assert store.cached_rows() is None  # nothing captured yet
    list(store.batches(64))
    parts = list(store.cached_rows())
    assert len(parts) > 2  # several shards: contexts are cut across them
    acts = np.concatenate([a for a, _ in parts])
    positions = np.concatenate([p for _, p in parts])
    assert positions.dtype == np.int32 and positions.shape == (store.n_tokens, 2)
    # every kept position exactly once, nothing else
    np.testing.assert_array_equal(np.sort(positions[:, 0] * 32 + positions[:, 1]), np.flatnonzero(store.keep))
    with model.trace(mx.array(store.contexts)) as trace:
        pass
    expected = np.array(trace.activations["model.layers.1.mlp"])[positions[:, 0], positions[:, 1]]
    np.testing.assert_allclose(acts, expected, rtol=1e-4, atol=1e-5)


def test_fill_cache_runs_the_model_once_over_each_context(model, tmp_path, monkeypatch):
    store = ActivationStore(model, TEXTS, *where(model), cache_dir=tmp_path, progress=False)
    calls = []
    trace = model.trace
    monkeypatch.setattr(model, "trace", lambda tokens, **k: calls.append(tokens.shape[0]) or trace(tokens, **k))
    store.fill_cache()
    sample = np.asarray(store.sample(100))
    epochs = [np.concatenate([np.array(b) for b in store.batches(64)]) for _ in range(2)]
    assert sum(calls) == len(store.contexts)  # the sample and both epochs read the cache
    assert len(sample) == 100 and all(len(e) == store.n_tokens for e in epochs)
    store.fill_cache()
    assert sum(calls) == len(store.contexts)
