"""Data-parallel training and sharded capture on two local ranks (`mlx.launch --backend ring -n 2`)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from dist_launch import REPO, free_ports, launch
from mlxterp.activations.shards import document_share
from mlxterp.errors import DataError, SAEError
from mlxterp.sae import SAE, SAEConfig
from mlxterp.sae.checkpoints import CHECKPOINT_FORMAT, checkpoint_path
from mlxterp.sae.io import read_tensors
from mlxterp.sae.train import train_sae_on_activations

PER_RANK_BATCH = 64
CONFIG = dict(expansion_factor=8, k=2, batch_size=PER_RANK_BATCH, num_epochs=2, warmup_steps=5, learning_rate=3e-3,
              log_every=5, checkpoint_every=10, validation_split=0.0, dead_tokens_threshold=256,
              resample_dead_every=15)


def sparse_data(n=2048, d=16, n_dirs=48, active=3, seed=0):
    rng = np.random.default_rng(seed)
    dirs = rng.normal(size=(n_dirs, d))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    idx = np.argsort(rng.random((n, n_dirs)), axis=1)[:, :active]
    mags = rng.uniform(0.5, 2.0, size=(n, active))
    return (np.einsum("na,nad->nd", mags, dirs[idx]) * 10 + 3).astype(np.float32)


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("dist") / "data.npy"
    np.save(path, sparse_data())
    return path


@pytest.fixture(scope="module")
def single(data_file):
    """The one-process run with the global batch (2 x PER_RANK_BATCH) and the same seed."""
    return train_sae_on_activations(np.load(data_file), SAEConfig(**{**CONFIG, "batch_size": 2 * PER_RANK_BATCH}),
                                    progress=False)


def assert_same_weights(sae, reference):
    for name, value in reference.parameters().items():
        if not isinstance(value, dict):
            np.testing.assert_allclose(np.array(sae[name]), np.array(value), rtol=1e-4, atol=1e-5, err_msg=name)


def run_arrays(data_file, out, *extra, **kw):
    result = launch(["arrays", str(data_file), str(out), json.dumps(CONFIG), *extra], **kw)
    reports = [json.loads(p.read_text()) for p in sorted(out.parent.glob(f"{out.name}.rank*.json"))]
    return result, reports


def test_two_ranks_train_the_weights_of_one_process_with_the_global_batch(data_file, single, tmp_path):
    out = tmp_path / "two.mlx"
    result, reports = run_arrays(data_file, out)
    assert result.returncode == 0, result.stdout[-4000:]
    sae = SAE.load(out)
    assert_same_weights(sae, single)
    # both ranks hold the same weights, and the counters count the global batch
    rank0, rank1 = (np.load(f"{out}.rank{r}.npz") for r in (0, 1))
    for name in rank0.files:
        np.testing.assert_array_equal(rank0[name], rank1[name], err_msg=name)
    assert [r["ranks"] for r in reports] == [2, 2]
    assert reports[0]["fired"] == reports[1]["fired"] > 0
    assert reports[0]["max_dead_fraction"] > 0  # AuxK and resampling ran on the global counters
    steps = single.metadata["training"]["steps"]
    assert sae.metadata["training"]["steps"] == steps == 2 * (2048 // (2 * PER_RANK_BATCH))
    assert sae.metadata["training"]["tokens"] == single.metadata["training"]["tokens"]
    assert not checkpoint_path(out).exists()


def test_a_rank_killed_midway_resumes_from_the_last_checkpoint_on_both(data_file, single, tmp_path):
    out = tmp_path / "killed.mlx"
    result, _ = run_arrays(data_file, out, "13")  # mlx.launch exits 0 whatever its ranks did
    assert "Node with rank 1 exited with code -9" in result.stdout, result.stdout[-4000:]
    _, header = read_tensors(checkpoint_path(out), CHECKPOINT_FORMAT, 1, "checkpoint")
    assert header["step"] == 10 and not out.exists()
    with pytest.raises(SAEError, match="written by a run on 2 ranks, this run has 1"):
        train_sae_on_activations(np.load(data_file), SAEConfig(**CONFIG), save_path=out, progress=False)
    result, reports = run_arrays(data_file, out)
    assert result.returncode == 0, result.stdout[-4000:]
    assert [(r["rank"], r["resumed_from"]) for r in reports] == [(0, 10), (1, 10)]
    assert_same_weights(SAE.load(out), single)


def test_document_share_is_deterministic_disjoint_and_balanced():
    texts = [f"doc {i} " + "x" * (i * 37 % 101) for i in range(40)]
    shares = [document_share(texts, r, 3) for r in range(3)]
    assert sorted(sum(shares, [])) == sorted(texts)
    assert shares == [document_share(list(texts), r, 3) for r in range(3)]
    sizes = [sum(map(len, s)) for s in shares]
    assert max(sizes) - min(sizes) <= max(map(len, texts))
    assert document_share(texts, 0, 1) == texts
    with pytest.raises(DataError, match="cannot be shared among 3 ranks"):
        document_share(texts[:2], 0, 3)


def test_mlxterp_train_under_mlx_launch_captures_a_share_per_rank(tmp_path):
    """`mlx.launch -n 2 -- mlxterp train`: each rank captures its share of the training documents
    into its own cache; rank 0 captures the validation documents (those a one-process run holds
    out), saves the SAE and prints."""
    out = tmp_path / "cli.mlx"
    flags = ["--layer", "1", "--expansion-factor", "2", "--k", "4", "--batch-size", "64", "--context-length", "32",
             "--epochs", "2"]
    result = launch(["command", str(out), *flags])
    assert result.returncode == 0, result.stdout[-4000:]
    assert result.stdout.count(f"SAE to {out}") == 1
    reports = [json.loads((tmp_path / f"cli.mlx.rank{r}.json").read_text()) for r in (0, 1)]
    assert reports[0]["val_texts"] == reports[1]["val_texts"] != []
    caches = sorted(p.name.rsplit("-", 1)[0] for p in (tmp_path / "cli.mlx.cache").iterdir())
    assert caches == ["train-rank0of2", "train-rank1of2", "val"]
    sae = SAE.load(out)
    assert sae.metadata["training"]["ranks"] == 2 and "val/fvu" in sae.metadata["training"]["final_metrics"]
    assert sae.metadata["n_val_documents"] == len(reports[0]["val_texts"])
    shards = [json.loads((tmp_path / "cli.mlx.cache" / name / "manifest.json").read_text())["n_tokens"]
              for name in sorted(os.listdir(tmp_path / "cli.mlx.cache")) if name.startswith("train")]
    assert sae.metadata["n_train_tokens_per_epoch"] == sum(shards)


@pytest.mark.parametrize("rank", [0, 1])
def test_a_rank_that_cannot_reach_the_others_fails_with_a_clear_error(tmp_path, rank):
    """Rank 0 waits for connections (bounded by MLXTERP_DISTRIBUTED_TIMEOUT); rank 1 connects and
    gives up after MLX's own ~30 s of retries."""
    port = free_ports(2)
    hostfile = tmp_path / "hosts.json"
    hostfile.write_text(json.dumps([[f"127.0.0.1:{port}"], [f"127.0.0.1:{port + 1}"]]))
    env = {**os.environ, "MLX_RANK": str(rank), "MLX_HOSTFILE": str(hostfile), "MLXTERP_DISTRIBUTED_TIMEOUT": "3",
           "PYTHONPATH": str(REPO)}
    code = ("import sys, time\nfrom mlxterp import distributed\nstart = time.monotonic()\ntry:\n"
            "    distributed.group()\nfinally:\n    print(time.monotonic() - start, file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode != 0
    waited = float(result.stderr.strip().splitlines()[0])  # printed before the traceback
    assert waited < (10 if rank == 0 else 60)
    assert "DistributedError: rank %d could not reach the other ranks" % rank in result.stderr
    assert "mlx.launch" in result.stderr and f"127.0.0.1:{port}" in result.stderr
