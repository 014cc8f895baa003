"""The out-of-core activation cache: memory-mapped block reads, a shuffle across shards in a bounded
buffer, a capture and a training run resumed mid-way, and a full disk."""

import errno
import json
import tracemalloc
from types import SimpleNamespace

import numpy as np
import pytest
from mlx.utils import tree_flatten
from safetensors.numpy import load_file

from mlxterp import InterpretableModel
from mlxterp.activations import ActivationStore, ContextSettings, disk_cache
from mlxterp.activations.shuffle import shuffled_batches
from mlxterp.errors import DataError
from mlxterp.sae import train as train_module
from mlxterp.sae.checkpoints import checkpoint_path
from mlxterp.sae.config import SAEConfig
from tiny_models import byte_tokenizer, tiny_model

TEXTS = [f"document number {i}: " + "some words here " * (3 + i % 5) for i in range(40)]
SETTINGS = ContextSettings(context_length=32)


@pytest.fixture(scope="module")
def model():
    return InterpretableModel((tiny_model("llama", seed=2), byte_tokenizer()))


def small_store(model, cache_dir, **kw):
    """A store whose cache holds several shards (64+ rows each, two contexts a forward)."""
    return ActivationStore(model, TEXTS, model.hook_point(1, "mlp"), SETTINGS, cache_dir=cache_dir, progress=False,
                           shuffle_buffer_tokens=256, contexts_per_forward=2, **kw)


def count_forwards(model, monkeypatch, fail_after=None):
    """Count the model's forwards (model.trace); with `fail_after`, the next one raises."""
    calls = {"n": 0}
    trace = type(model).trace.__get__(model)  # the unpatched method

    def counting(*args, **kwargs):
        if fail_after is not None and calls["n"] == fail_after:
            raise RuntimeError("killed")
        calls["n"] += 1
        return trace(*args, **kwargs)

    monkeypatch.setattr(model, "trace", counting)
    return calls


def synthetic_cache(folder, n_shards, rows=64, width=8):
    """A cache of `n_shards` shards whose rows are (shard, row within the shard, 0, ...)."""
    manifest = {"shards": [], "shard_rows": [], "d_model": width}
    folder.mkdir(parents=True, exist_ok=True)
    for shard in range(n_shards):
        data = np.zeros((rows, width), dtype=np.float32)
        data[:, 0], data[:, 1] = shard, np.arange(rows)
        manifest["shards"].append(disk_cache.write_shard(folder, manifest, {"activations": data}, 0))
        manifest["shard_rows"].append(rows)
    return manifest


def test_memory_mapped_reads_give_the_rows_the_model_gave(model, tmp_path):
    store = small_store(model, tmp_path)
    captured = np.concatenate(list(store.chunks()))  # epoch 0 runs the model and writes the shards
    from_model = np.concatenate(list(small_store(model, None).chunks()))
    np.testing.assert_allclose(captured, from_model, rtol=1e-6, atol=1e-6)
    manifest = json.loads((store.cache_dir / "manifest.json").read_text())
    assert manifest["complete"] and len(manifest["shards"]) >= 4 and sum(manifest["shard_rows"]) == store.n_tokens
    whole = [load_file(str(store.cache_dir / name))["activations"] for name in manifest["shards"]]
    np.testing.assert_array_equal(np.concatenate(whole), captured)
    np.testing.assert_array_equal(disk_cache.read_rows(store.cache_dir / manifest["shards"][1], 5, 17), whole[1][5:17])
    # A later epoch reads blocks of the shards in a random order: the same rows, each once, reordered.
    again = np.concatenate(list(store.chunks()))
    assert again.shape == captured.shape and not np.array_equal(again, captured)
    by_row = lambda rows: rows[np.lexsort(rows.T[::-1])]  # noqa: E731
    np.testing.assert_array_equal(by_row(again), by_row(captured))


def test_a_complete_cache_is_read_by_a_store_of_other_buffer_and_forward_sizes(model, tmp_path, monkeypatch):
    written = np.concatenate(list(small_store(model, tmp_path).chunks()))
    calls = count_forwards(model, monkeypatch)
    reader = ActivationStore(model, TEXTS, model.hook_point(1, "mlp"), SETTINGS, cache_dir=tmp_path, progress=False)
    np.testing.assert_array_equal(np.concatenate(list(reader.chunks())), written)
    assert calls["n"] == 0


def test_the_shuffle_mixes_many_shards_within_a_bounded_buffer(tmp_path):
    manifest = synthetic_cache(tmp_path, n_shards=20)
    blocks = disk_cache.shuffled_blocks(tmp_path, manifest, 16, np.random.default_rng(0))
    batches = list(shuffled_batches(blocks, 32, 128, np.random.default_rng(1)))  # the buffer holds two shards' rows
    rows = np.concatenate(batches)
    assert len(rows) == 20 * 64 and len({(a, b) for a, b in rows[:, :2].tolist()}) == 20 * 64  # each row once
    assert all(len(set(batch[:, 0].tolist())) >= 4 for batch in batches[:10])  # every early batch spans shards
    assert len(set(batches[0][:, 0].tolist())) >= 6


@pytest.mark.parametrize("source", ["stream", "cache"])
def test_memory_held_does_not_grow_with_the_data(tmp_path, source):
    width, capacity, chunk = 64, 512, 64
    row_bytes = 4 * width

    def peak(n_chunks):
        if source == "cache":
            manifest = synthetic_cache(tmp_path / str(n_chunks), n_shards=n_chunks // 4, rows=4 * chunk, width=width)
            chunks = disk_cache.shuffled_blocks(tmp_path / str(n_chunks), manifest, chunk, np.random.default_rng(0))
        else:
            chunks = (np.full((chunk, width), i, dtype=np.float32) for i in range(n_chunks))
        tracemalloc.start()
        served = sum(len(b) for b in shuffled_batches(chunks, 32, capacity, np.random.default_rng(0)))
        held = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert served == n_chunks * chunk
        return held

    small, large = peak(40), peak(400)  # 5 and 50 buffers' worth of rows
    assert large <= 1.1 * small + 64 * 1024
    assert large <= (capacity + 4 * chunk) * row_bytes + 256 * 1024


def test_an_interrupted_capture_resumes_from_its_last_complete_shard(model, tmp_path, monkeypatch):
    calls = count_forwards(model, monkeypatch)
    reference = np.concatenate(list(small_store(model, tmp_path / "reference").chunks()))
    total = calls["n"]
    calls = count_forwards(model, monkeypatch, fail_after=total // 2)
    with pytest.raises(RuntimeError, match="killed"):
        list(small_store(model, tmp_path / "cache").chunks())
    folder = small_store(model, tmp_path / "cache").cache_dir
    manifest = json.loads((folder / "manifest.json").read_text())
    assert not manifest["complete"] and len(manifest["shards"]) >= 2
    assert sorted(p.name for p in folder.glob("shard-*")) == manifest["shards"]  # no partial shard left
    on_disk = manifest["contexts_done"] // 2  # forwards the complete shards hold
    assert 0 < on_disk < total // 2
    calls = count_forwards(model, monkeypatch)
    resumed = np.concatenate(list(small_store(model, tmp_path / "cache").chunks()))
    assert calls["n"] == total - on_disk  # only the forwards not on disk ran again
    np.testing.assert_allclose(resumed, reference, rtol=1e-6, atol=1e-6)
    assert json.loads((folder / "manifest.json").read_text())["complete"]
    # A partial cache of other weights under the same folder is refused, not resumed.
    other = InterpretableModel((tiny_model("llama", seed=5), byte_tokenizer()))
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="written for other activations: model_fingerprint"):
        next(small_store(other, tmp_path / "cache").chunks())


def test_a_full_disk_stops_with_a_clear_error_and_keeps_the_earlier_shards(model, tmp_path, monkeypatch):
    reference = np.concatenate(list(small_store(model, tmp_path / "reference").chunks()))
    real_open = open
    partial = []

    class FullDisk:
        """A file that takes half of what is written, then the disk is full."""

        def __init__(self, path):
            self.handle = real_open(path, "wb")
            partial.append(path)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def write(self, data):
            self.handle.write(data[: len(data) // 2])
            self.handle.flush()
            raise OSError(errno.ENOSPC, "No space left on device")

    def open_on_a_filling_disk(path, mode="r", *args, **kwargs):
        if ".shard-00002.safetensors" in str(path):
            return FullDisk(path)
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(disk_cache, "open", open_on_a_filling_disk, raising=False)
    store = small_store(model, tmp_path / "cache")
    with pytest.raises(DataError) as error:
        list(store.chunks())
    message = str(error.value)
    assert str(store.cache_dir) in message and "is full" in message and "No space left on device" in message
    assert "2 complete shards" in message and "resumes from its last complete shard" in message
    assert " MiB more" in message
    assert partial and not partial[0].exists()  # the half-written temporary is gone
    manifest = json.loads((store.cache_dir / "manifest.json").read_text())
    assert manifest["shards"] == ["shard-00000.safetensors", "shard-00001.safetensors"] and not manifest["complete"]
    assert sorted(p.name for p in store.cache_dir.iterdir()) == ["manifest.json", *manifest["shards"]]
    kept = np.concatenate([load_file(str(store.cache_dir / name))["activations"] for name in manifest["shards"]])
    np.testing.assert_allclose(kept, reference[: len(kept)], rtol=1e-6, atol=1e-6)
    monkeypatch.setattr(disk_cache, "open", real_open, raising=False)  # space was freed: run again
    np.testing.assert_allclose(np.concatenate(list(small_store(model, tmp_path / "cache").chunks())), reference,
                               rtol=1e-6, atol=1e-6)


def test_training_killed_mid_epoch_resumes_to_the_same_sae(model, tmp_path, monkeypatch):
    texts = [f"document {i}: " + "some words here and there " * (3 + i % 5) for i in range(80)]
    config = SAEConfig(expansion_factor=4, k=8, batch_size=128, context_length=64, num_epochs=2,
                       checkpoint_every=5, log_every=3)

    def train(name):
        return model.train_sae(layer=1, dataset=texts, component="mlp", config=config, save_path=tmp_path / f"{name}.mlx",
                               cache_dir=tmp_path / f"{name}-cache", progress=False)

    straight = train("straight")
    steps = straight.metadata["training"]["steps"]
    step_once = train_module.SAETrainer.train_batch
    ran = []

    def step_then_die_at(kill):
        def step(trainer, x, ckpt=None):
            step_once(trainer, x, ckpt)
            ran.append(trainer.step)
            if trainer.step == kill:
                raise KeyboardInterrupt
        return step

    second = (steps // 2 + 10) // 5 * 5  # a checkpoint's step in the second epoch
    for kill in (10, second):  # in the first epoch, then in the second (read back from the cache)
        monkeypatch.setattr(train_module.SAETrainer, "train_batch", step_then_die_at(kill))
        with pytest.raises(KeyboardInterrupt):
            train("resumed")
        assert checkpoint_path(tmp_path / "resumed.mlx").exists()
    assert ran[: 10] == list(range(1, 11)) and ran[10] == 11  # the second run went on from step 10
    ran.clear()
    monkeypatch.setattr(train_module.SAETrainer, "train_batch", step_then_die_at(None))
    resumed = train("resumed")
    assert ran == list(range(second + 1, steps + 1))  # no step was trained twice
    resumed_weights = dict(tree_flatten(resumed.parameters()))
    for name, value in tree_flatten(straight.parameters()):
        np.testing.assert_allclose(np.array(resumed_weights[name]), np.array(value), rtol=1e-5, atol=1e-6, err_msg=name)
    assert not checkpoint_path(tmp_path / "resumed.mlx").exists()


def test_a_capture_warns_first_when_the_disk_is_too_small(model, tmp_path, monkeypatch):
    store = small_store(model, tmp_path)
    monkeypatch.setattr(disk_cache.shutil, "disk_usage", lambda path: SimpleNamespace(total=1000, used=0, free=1000))
    with pytest.warns(UserWarning, match=r"needs about 0\.\d MiB and its disk has 0\.0 MiB free"):
        next(store.chunks())
