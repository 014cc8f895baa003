"""Seed 003, the guide users follow word for word: its code blocks run, in order, as written.

The guide loads "mlx-community/Llama-3.2-1B-Instruct" from the hub, which is unreachable here:
`mlx_lm.load` serves that id with a tiny random-weight llama (25 layers, so the guide's layers 6
to 24 exist; d_model 96, so its feature 1234 exists at 16x). `texts` is a list of short
documents, and the guide's `...` placeholders in lists of texts become `+ texts`. Pseudo-code
blocks and the WikiText-103 download are skipped (see SKIPPED); `mx.where(x)[0]` is MLX's own
TypeError (its `where` takes three arguments) and runs as docs/sae.md says to write it instead.
"""

import re
import urllib.request

import mlx.core as mx
import numpy as np
import pytest

from tiny_models import FAMILY_ARGS, byte_tokenizer

GUIDE_REPO = "mlx-community/Llama-3.2-1B-Instruct"
SKIPPED = {
    3: "downloads WikiText-103 through datasets (tests/test_data.py covers datasets objects)",
    6: "pseudo-code: the TopK loss formula",
    7: "pseudo-code: the L1 loss formula",
    19: "arithmetic on the reader's own d_model and d_hidden",
}
WHERE_LINE = "active_indices = mx.where(features[0, -1] != 0)[0]"
TEXTS = [
    f"Document {i}. " + " ".join(
        ["The river runs past the old mill.", "Prices rose again in the spring.",
         "She wrote the letter by candlelight.", "Seven ships left the harbour at dawn."][j % 4]
        for j in range(i % 3, i % 3 + 10))
    for i in range(16)
]


def guide_blocks(seeds_dir) -> list[str]:
    paths = sorted(seeds_dir.glob("003_*.txt"))
    if not paths:
        pytest.skip(f"seed 003 not found in {seeds_dir}")
    return re.findall(r"```python\n(.*?)```", paths[0].read_text(), flags=re.S)


@pytest.fixture
def guide_model(monkeypatch):
    import mlx_lm
    from mlx_lm.models import llama

    args = llama.ModelArgs.from_dict(dict(FAMILY_ARGS["llama"], hidden_size=96, num_hidden_layers=25))
    mx.random.seed(3)
    network = llama.Model(args)
    network.set_dtype(mx.float32)
    real_load = mlx_lm.load

    def load(path_or_repo, *a, **kw):
        return (network, byte_tokenizer()) if path_or_repo == GUIDE_REPO else real_load(path_or_repo, *a, **kw)

    monkeypatch.setattr(mlx_lm, "load", load)


@pytest.fixture
def served_dashboards(monkeypatch):
    """launch_dashboard(...) as the guide calls it (blocking, port 8000), made to serve on a free
    port without blocking; each page is fetched, then the server closed."""
    from mlxterp.sae import entry_points

    pages = []
    real_launch = entry_points._FEATURE_TOOLS["launch_dashboard"]

    def launch(sae, model, dataset, out_dir, port, block, **kw):
        assert (port, block) == (8000, True)
        with real_launch(sae, model, dataset, out_dir, 0, False, **kw) as server:
            pages.append(urllib.request.urlopen(server.url, timeout=10).read().decode())
        return server

    monkeypatch.setitem(entry_points._FEATURE_TOOLS, "launch_dashboard", launch)
    return pages


@pytest.fixture
def wandb_runs(monkeypatch, tmp_path):
    """The keyword arguments and logged keys of every wandb.init run (offline mode)."""
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    runs = []
    real_init = wandb.init

    def init(**kwargs):
        run = real_init(**kwargs)
        runs.append((kwargs, set()))
        real_log = run.log
        run.log = lambda data, **kw: (runs[-1][1].update(data), real_log(data, **kw))[1]
        return run

    monkeypatch.setattr(wandb, "init", init)
    return runs


def test_every_guide_block_runs(shared_data_dir, guide_model, served_dashboards, wandb_runs, tmp_path,
                                monkeypatch, capsys):
    blocks = guide_blocks(shared_data_dir.parent / "seeds")
    assert len(blocks) == 28, "seed 003 changed: review SKIPPED and this test"
    monkeypatch.chdir(tmp_path)
    namespace = {"texts": list(TEXTS), "mx": mx, "np": np,
                 "layer": 10, "component": "mlp", "k": 32, "expansion": 16}

    for number, block in enumerate(blocks, start=1):
        if number in SKIPPED:
            continue
        source = re.sub(r",\s*\.\.\.\]", "] + texts", block)
        if WHERE_LINE in source:
            with pytest.raises(TypeError):
                mx.where(mx.array([0.0, 1.0]) != 0)
            source = source.replace(WHERE_LINE, "active_indices = np.flatnonzero(np.array(features[0, -1]))")
        exec(compile(source, f"<seed 003 block {number}>", "exec"), namespace)

    printed = capsys.readouterr().out
    model, sae = namespace["model"], namespace["sae"]
    assert "✓ SAE is compatible!" in printed
    # Blocks 8 and 9 use block 4's SAE: 32x (3,072 latents), k=128 on every one of the 24 tokens.
    assert "Active features: 3072/3072" in printed and len("The capital of France is") * 128 == 3072
    assert f"Active feature IDs: {namespace['active_indices'].tolist()}" in printed
    assert len(namespace["active_indices"]) == 128
    assert "Dead features:" in printed and "Reconstruction MSE:" in printed
    for path in ["my_sae.mlx", "sae_layer6.mlx", "sae_layer24.mlx"]:
        assert (tmp_path / path).exists()
    [(init, logged)] = wandb_runs  # block 11
    assert (init["project"], init["name"], init["tags"]) == ("my-sae-experiments", "sae_layer10_mlp",
                                                             ["sae", "layer10", "mlp"])
    assert {"train/loss", "train/l0", "train/dead_fraction", "val/loss"} <= logged
    assert (namespace["sae_attn"].metadata["component"], namespace["sae_resid"].metadata["component"]) == ("attn", "output")

    # Phase 2 on the last SAE trained (block 18: tied weights, layer 10 mlp).
    assert sae.tied_weights and sae.metadata["layer"] == 10
    assert len(namespace["top_features"].top) == 10
    examples = namespace["activating_texts"]
    assert 0 < len(examples) <= 20 and all(e.max_activation > 0 for e in examples)
    assert "1234" in (tmp_path / "feature_1234.html").read_text()
    assert len(served_dashboards) == 1 and "<html" in served_dashboards[0].lower()
    with model.trace("Generate text about...") as trace:
        clean = model.output.save()
    steered = namespace["output"].value
    assert steered.shape == clean.value.shape
    assert not np.allclose(np.array(steered), np.array(clean.value))
