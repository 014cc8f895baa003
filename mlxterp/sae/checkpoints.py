"""Training checkpoints: weights, optimizer state, counters and position in one safetensors file.

A checkpoint lives beside the SAE it will become ("<save_path>.checkpoint"), is written
atomically, and is never written when anything is NaN/inf, so the last good one survives.
A resume refuses a checkpoint made for another config, shape, run length, model, hook point or
dataset (the metadata entries in RUN_IDENTITY).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import mlx.core as mx
from mlx.utils import tree_flatten, tree_unflatten

from ..errors import SAEError
from .io import read_tensors, sae_spec, sae_tensors, write_tensors

if TYPE_CHECKING:
    from .train import SAETrainer

CHECKPOINT_FORMAT = "mlxterp.sae.checkpoint"
CHECKPOINT_VERSION = 1
# Metadata entries that say which activations a run trains on; a resume needs them all equal.
RUN_IDENTITY = ("model_name", "model_fingerprint", "hook_point", "layer", "component", "dataset_fingerprint")


def checkpoint_path(save_path: str | os.PathLike) -> Path:
    """Where training checkpoints of the SAE saved at `save_path` live: "<save_path>.checkpoint"."""
    return Path(f"{os.fspath(save_path)}.checkpoint")


def save_checkpoint(trainer: "SAETrainer", path: Path) -> None:
    """Write the trainer's state to `path` atomically, if every tensor is finite."""
    tensors = {f"sae.{k}": v for k, v in sae_tensors(trainer.sae).items()}
    tensors.update({f"optimizer.{k}": v for k, v in tree_flatten(trainer.optimizer.state)})
    tensors.update({f"counters.{k}": v for k, v in trainer.counters.items() if k != "metric_sum"})
    for name, value in tensors.items():
        if mx.issubdtype(value.dtype, mx.floating) and not bool(mx.all(mx.isfinite(value))):
            raise SAEError(
                f"{name} became NaN/inf by step {trainer.step}, so no checkpoint was written (the "
                f"last good one stays at {path}): lower learning_rate (now {trainer.peak_lr:.2e}), "
                "keep normalize_input=True, or check the activations"
            )
    header = {"sae": sae_spec(trainer.sae), "metadata": trainer.sae.metadata, "config": trainer.config.to_dict(),
              "step": trainer.step, "epoch": trainer.epoch, "batch_in_epoch": trainer.batch_in_epoch,
              "total_steps": trainer.total_steps, "any_dead": trainer.any_dead, "history": trainer.history,
              "ranks": trainer.dp.size}
    write_tensors(path, tensors, header, CHECKPOINT_FORMAT, CHECKPOINT_VERSION)


def load_checkpoint(trainer: "SAETrainer", path: Path) -> None:
    """Restore the trainer's state from `path`, refusing a checkpoint of another run."""
    tensors, header = read_tensors(path, CHECKPOINT_FORMAT, CHECKPOINT_VERSION, "checkpoint")
    fix = f"pass another save_path, pass resume=False, or delete {path} to start over"
    if header.get("config") != trainer.config.to_dict() or header.get("sae") != sae_spec(trainer.sae):
        raise SAEError(f"the checkpoint {path} belongs to a different SAE or config: {fix}, "
                       "or resume with the same config")
    if header.get("ranks", 1) != trainer.dp.size:
        raise SAEError(f"the checkpoint {path} was written by a run on {header.get('ranks', 1)} ranks, this run has "
                       f"{trainer.dp.size}: resume with as many ranks (mlx.launch -n/--hosts), or {fix}")
    if header.get("total_steps") != trainer.total_steps:
        raise SAEError(f"the checkpoint {path} was laid out for {header.get('total_steps')} steps, "
                       f"this run for {trainer.total_steps}: resume with the same data, epochs and "
                       f"tokens_per_epoch, or {fix}")
    saved_meta = header.get("metadata") or {}
    differ = [key for key in RUN_IDENTITY if saved_meta.get(key) != trainer.sae.metadata.get(key)]
    if differ:
        details = ", ".join(f"{key} {saved_meta.get(key)!r} (this run: {trainer.sae.metadata.get(key)!r})"
                            for key in differ)
        raise SAEError(f"the checkpoint {path} was made on other activations: {details}. To train on "
                       f"these activations, {fix}")
    groups: dict[str, list[tuple[str, mx.array]]] = {"sae": [], "optimizer": [], "counters": []}
    for name, value in tensors.items():
        group, _, key = name.partition(".")
        groups[group].append((key, mx.array(value)))
    trainer.sae.update(tree_unflatten(groups["sae"]))
    trainer.optimizer.state = tree_unflatten(groups["optimizer"])
    trainer.counters.update(dict(groups["counters"]))
    trainer.sae.metadata = saved_meta
    trainer.step, trainer.epoch, trainer.batch_in_epoch = header["step"], header["epoch"], header["batch_in_epoch"]
    trainer.history = list(header.get("history", []))
    trainer.any_dead = bool(header.get("any_dead", False))
