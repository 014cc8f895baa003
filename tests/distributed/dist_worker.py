"""One rank of the distributed tests, started by `mlx.launch` (see dist_launch.py beside it).

    dist_worker.py arrays <data.npy> <out> <config json> [kill_at_step]
    dist_worker.py command <out> <mlxterp train flags>

Each rank writes <out>.rank<r>.json (what it saw) and, for arrays, <out>.rank<r>.npz (its copy of
the weights); rank 0 saves the SAE to <out>.
"""

import json
import os
import signal
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np

sys.path.insert(0, str(Path(__file__).parents[1]))

from mlxterp import distributed  # noqa: E402
from mlxterp.sae import SAEConfig  # noqa: E402
from mlxterp.sae.io import sae_tensors  # noqa: E402
from mlxterp.sae.train import SAETrainer  # noqa: E402
from mlxterp.sae.model import SAE  # noqa: E402


def arrays(data_path: str, out: str, config: dict, kill_at: int | None) -> None:
    rank = distributed.group().rank()
    cfg = SAEConfig(**config)
    data = np.load(data_path)
    sae = SAE.from_config(data.shape[1], cfg)
    trainer = SAETrainer(sae, cfg)
    if kill_at is not None and rank == 1:
        log = trainer._log

        def log_then_die():
            if trainer.step >= kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return log()

        trainer._log = log_then_die
    trainer.fit(data, save_path=out, progress=False)
    np.savez(f"{out}.rank{rank}.npz", **{k: np.array(v) for k, v in sae_tensors(sae).items()})
    report = {"rank": rank, "ranks": distributed.group().size(), "resumed_from": trainer.resumed_from,
              "steps": trainer.step, "fired": float(mx.sum(trainer.counters["fired"]).item()),
              "max_dead_fraction": max(h["dead_fraction"] for h in trainer.history)}
    Path(f"{out}.rank{rank}.json").write_text(json.dumps(report))


def command(out: str, flags: list[str]) -> None:
    """`mlxterp train` (the CLI, so the pipeline) on the tiny model, under mlx.launch."""
    from mlxterp import InterpretableModel, cli
    from mlxterp.data import load_texts, split_documents
    from tiny_models import byte_tokenizer, tiny_model

    rank = distributed.group().rank()
    texts = [f"document {i}: " + "some words and more words here " * (2 + i % 7) for i in range(30)]
    corpus = Path(f"{out}.corpus.rank{rank}.txt")  # the same text; each rank reads its own copy
    corpus.write_text("\n\n".join(texts))
    model = InterpretableModel((tiny_model("llama", seed=2), byte_tokenizer()))
    cli._load_model = lambda spec: model
    assert cli.main(["train", "--dataset", str(corpus), "--out", out, "--cache-dir", f"{out}.cache", *flags]) == 0
    report = {"rank": rank, "val_texts": split_documents(load_texts(corpus), 0.05, 0)[1]}
    Path(f"{out}.rank{rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    if mode == "arrays":
        arrays(args[0], args[1], json.loads(args[2]), int(args[3]) if len(args) > 3 else None)
    else:
        command(args[0], args[1:])
