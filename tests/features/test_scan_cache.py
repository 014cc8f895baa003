"""Scanning an activation store's cache instead of running the model: the dashboard built from the
cached training activations equals the one the model gives on the same tokens; a cache without
row positions (an older version) is never read, the model runs instead."""

import json

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from mlxterp.activations import ActivationStore, ContextSettings
from mlxterp.errors import DataError
from mlxterp.features import collect_dashboard_data
from mlxterp.features.scan import scan

SETTINGS = ContextSettings(context_length=32)
TEXTS = [f"note {i}: " + "the cache holds rows " * (2 + i % 4) + "and more words" * (i % 3) for i in range(30)]
BOARD = dict(contexts=SETTINGS, contexts_per_forward=3, top_k=4, window=(3, 2), logit_k=3, n_similar=2)


class Counter:
    """Wraps model.trace to count forwards."""

    def __init__(self, model, monkeypatch):
        self.n, self.trace = 0, model.trace
        monkeypatch.setattr(model, "trace", self)

    def __call__(self, *args, **kwargs):
        self.n += 1
        return self.trace(*args, **kwargs)


def cached_store(model, sae, tmp_path, **options):
    store = ActivationStore(model, TEXTS, model.hook_point(1, "output"), SETTINGS, cache_dir=tmp_path,
                            progress=False, shuffle_buffer_tokens=256, **options)
    store.fill_cache()
    return store


def scanned_contexts(sae, model, dataset, n_tokens):
    return scan(sae, model, dataset, [], n_tokens=n_tokens, contexts=SETTINGS, contexts_per_forward=3)


def assert_same_board(got, want):
    for key in ("model", "layer", "component", "d_model", "d_hidden", "n_tokens", "n_contexts", "context_length"):
        assert got[key] == want[key], key
    assert got["density_histogram"]["counts"] == want["density_histogram"]["counts"]
    np.testing.assert_allclose(got["density_histogram"]["edges"], want["density_histogram"]["edges"], rtol=1e-5)
    assert len(got["features"]) == len(want["features"])
    for mine, theirs in zip(got["features"], want["features"]):
        assert mine["index"] == theirs["index"]
        for key in ("frequency", "mean_activation", "max_activation"):
            assert mine[key] == pytest.approx(theirs[key], rel=1e-5, abs=1e-6)
        assert mine["histogram"]["counts"] == theirs["histogram"]["counts"]
        for band, other in zip(mine["quantile_examples"], theirs["quantile_examples"]):
            assert [e["tokens"] for e in band["examples"]] == [e["tokens"] for e in other["examples"]]
        for example, other in zip(mine["top_examples"], theirs["top_examples"]):
            assert example["tokens"] == other["tokens"] and example["peak"] == other["peak"]
            np.testing.assert_allclose(example["activations"], other["activations"], rtol=1e-4, atol=1e-4)
        assert len(mine["top_examples"]) == len(theirs["top_examples"])


@pytest.mark.parametrize("n_tokens", [None, 300])
def test_the_dashboard_from_the_cache_equals_the_model_on_the_same_tokens(tiny, make_sae, tmp_path, monkeypatch,
                                                                         n_tokens):
    sae = make_sae(tiny, d_hidden=64, k=4)
    store = cached_store(tiny, sae, tmp_path)
    forwards = Counter(tiny, monkeypatch)
    from_cache = collect_dashboard_data(sae, tiny, store, n_tokens=n_tokens, **BOARD)
    assert forwards.n == 0
    contexts = scanned_contexts(sae, tiny, store, n_tokens)
    assert forwards.n == 0
    assert from_cache["n_tokens"] == (store.n_tokens if n_tokens is None else n_tokens)
    # the model over exactly those contexts and positions, in the cache's order
    from_model = collect_dashboard_data(sae, tiny, contexts, n_tokens=None, **BOARD)
    assert forwards.n == -(-len(contexts) // 3)
    assert_same_board(from_cache, from_model)
    assert sum(len(f["top_examples"]) for f in from_cache["features"]) > 0
    if n_tokens is None:  # every kept token of the store, each once
        assert contexts.keep.sum() == store.keep.sum() and len(contexts) == len(store.contexts)
        assert sorted(map(bytes, contexts.tokens)) == sorted(map(bytes, store.contexts))


def make_old(store):
    """Rewrite the store's cache as version 3 wrote it: activations only."""
    manifest = json.loads((store.cache_dir / "manifest.json").read_text())
    for shard in manifest["shards"]:
        path = str(store.cache_dir / shard)
        save_file({"activations": load_file(path)["activations"]}, path)
    manifest["version"] = 3
    (store.cache_dir / "manifest.json").write_text(json.dumps(manifest))


def test_a_cache_without_positions_is_not_read_the_model_runs(tiny, make_sae, tmp_path, monkeypatch):
    sae = make_sae(tiny, d_hidden=64, k=4)
    store = cached_store(tiny, sae, tmp_path)
    make_old(store)
    assert store.cached_rows() is None
    forwards = Counter(tiny, monkeypatch)
    board = collect_dashboard_data(sae, tiny, store, n_tokens=200, **BOARD)
    packed = store.packed.first_tokens(200)
    assert forwards.n == -(-len(packed) // 3)
    assert_same_board(board, collect_dashboard_data(sae, tiny, packed, n_tokens=None, **BOARD))
    # training re-captures it, with positions
    store.fill_cache()
    assert store.cached_rows() is not None
    assert json.loads((store.cache_dir / "manifest.json").read_text())["version"] > 3


def test_a_store_of_other_activations_is_refused(tiny, make_sae, tmp_path):
    sae = make_sae(tiny, d_hidden=64, k=4)
    other = ActivationStore(tiny, TEXTS, tiny.hook_point(0, "output"), SETTINGS, progress=False)
    with pytest.raises(DataError, match="the SAE reads model.layers.1"):
        scanned_contexts(sae, tiny, other, 100)
    longer = ActivationStore(tiny, TEXTS, tiny.hook_point(1, "output"), ContextSettings(context_length=64),
                             progress=False)
    with pytest.raises(DataError, match="context settings"):
        scanned_contexts(sae, tiny, longer, 100)
    with pytest.raises(DataError, match="hold 64 tokens each"):
        scanned_contexts(sae, tiny, longer.packed, 100)


def test_a_cache_whose_contexts_are_not_contiguous_is_refused(tiny, make_sae, tmp_path):
    sae = make_sae(tiny, d_hidden=64, k=4)
    store = cached_store(tiny, sae, tmp_path)
    shard = str(store.cache_dir / "shard-00000.safetensors")
    part = load_file(shard)
    order = np.random.default_rng(0).permutation(len(part["positions"]))
    save_file({"activations": part["activations"][order], "positions": part["positions"][order]}, shard)
    with pytest.raises(DataError, match="not contiguous"):
        scanned_contexts(sae, tiny, store, None)
