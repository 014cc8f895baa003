"""Training several SAEs (and transcoders) on one stream of rows: each row holds the activations of
several hook points side by side (one forward captured them all), each SAE takes its columns.

Every SAE keeps its own `SAETrainer`: optimizer, LR schedule, dead-latent counters, logging,
validation, checkpoint and W&B run; this module only deals the rows out, batch by batch, so the
language model runs once per batch of tokens for all of them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import mlx.core as mx
import numpy as np

from ..errors import SAEError
from .optim import training_cache_limit
from .train import SAETrainer
from .train_data import TrainData, for_epoch


@dataclass
class Job:
    """One SAE of a joint run: its trainer, how it takes its rows from a shared row, and its files.

    `select` maps shared rows (n, width) numpy to this SAE's rows (m, data_width), m <= n (its
    columns, less the tokens above its norm limit). `val`: its validation data (any `TrainData`).
    """

    trainer: SAETrainer
    select: Callable[[np.ndarray], np.ndarray]
    val: TrainData | None = None
    save_path: str | os.PathLike | None = None
    init_sample: Any = None


class _Cutter:
    """Collects rows and hands them back in batches of exactly `size`."""

    def __init__(self, size: int):
        self.size, self.parts, self.have = size, [], 0

    def push(self, rows: np.ndarray) -> list[mx.array]:
        self.parts.append(rows)
        self.have += len(rows)
        if self.have < self.size:
            return []
        data = np.concatenate(self.parts)
        full = len(data) // self.size * self.size
        self.parts, self.have = [data[full:]], len(data) - full
        return [mx.array(data[start : start + self.size]) for start in range(0, full, self.size)]


def train_many(
    jobs: list[Job],
    train: Callable[..., Iterable[Any]],
    tokens_per_epoch: int | None,
    epochs: int | None = None,
    resume: bool = True,
    progress: bool = True,
) -> list[dict[str, float]]:
    """Train every job's SAE for `epochs` passes over `train` (a callable returning a fresh iterable
    of shared rows per epoch, given the epoch when it takes an argument); returns each job's last metrics, in order.

    Each SAE trains on batches of its own `config.batch_size`; its checkpoints go beside its
    `save_path` and a resumed SAE skips the batches of the epoch it had already trained on.
    """
    if not jobs:
        raise SAEError("no SAE to train: pass at least one hook point or transcoder")
    epochs = jobs[0].trainer.config.num_epochs if epochs is None else epochs
    if any(job.init_sample is None for job in jobs):
        raise SAEError("every job needs init_sample (its raw training rows) to fit normalization and b_dec")
    trainers = [job.trainer for job in jobs]
    ckpts = [t.begin(tokens_per_epoch, epochs, job.save_path, job.init_sample, resume, progress)[0]
             for t, job in zip(trainers, jobs)]
    metrics: list[dict[str, float]] = [{} for _ in jobs]
    try:
        with training_cache_limit():
            while any(t.epoch < epochs for t in trainers):
                epoch = min(t.epoch for t in trainers)
                active = [i for i, t in enumerate(trainers) if t.epoch == epoch]
                for i in active:
                    if trainers[i].batch_in_epoch == 0:
                        trainers[i]._reset_epoch_stats()
                cutters = {i: _Cutter(trainers[i].config.batch_size) for i in active}
                skip = {i: trainers[i].batch_in_epoch for i in active}
                ran = dict.fromkeys(active, 0)
                for rows in for_epoch(train, epoch):
                    rows = np.asarray(rows, dtype=np.float32)
                    for i in active:
                        for batch in cutters[i].push(jobs[i].select(rows)):
                            if skip[i]:
                                skip[i] -= 1
                                continue
                            trainers[i].train_batch(batch, ckpts[i])
                            ran[i] += 1
                for i in active:
                    if ran[i] == 0 and trainers[i].batch_in_epoch == 0:
                        raise SAEError(f"epoch {epoch + 1} gave the SAE at {trainers[i].progress_label} no full batch "
                                       f"of {trainers[i].config.batch_size} tokens: lower batch_size or add data")
                    metrics[i] = trainers[i].end_epoch(jobs[i].val)
    finally:
        for t in trainers:
            t.close()
    return [t.finish(m, job.save_path, ckpt) for t, m, job, ckpt in zip(trainers, metrics, jobs, ckpts)]
