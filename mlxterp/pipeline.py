"""Training SAEs on a language model: the activation store joined to the SAE trainer, for one hook
point (`train_sae_on_model`) or several SAEs and transcoders from one forward (`train_saes_on_model`)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from . import distributed
from .activations import ActivationStore, norm_limit, within_limit, within_limits
from .activations.shards import document_share
from .data import load_texts, split_documents
from .errors import DataError
from .hookpoint import HookPoint
from .sae import SAE, SAEConfig, train_sae_on_activations
from .sae.train import INIT_TOKENS, SAETrainer
from .sae.train_many import Job, train_many

if TYPE_CHECKING:
    from .model import InterpretableModel

MAX_VALIDATION_TOKENS = 200_000
DEFAULT_COMPONENT = "mlp"


def train_sae_on_model(
    model: "InterpretableModel",
    layer: int,
    dataset: Any = None,
    component: str = DEFAULT_COMPONENT,
    config: SAEConfig | None = None,
    save_path: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    max_tokens: int | None = None,
    progress: bool = True,
) -> SAE:
    """Train an SAE on `model`'s activations at (`layer`, `component`) over `dataset`.

    Documents are split into training and validation sets (`config.validation_split`, by
    document); the activation store packs them into contexts (`config.contexts`) and leaves out
    tokens whose norm exceeds `config.max_norm_ratio` times the median (the limit is set from the
    initialization sample and stored as metadata "max_token_norm"). With `cache_dir`,
    activations are cached on disk so later epochs (and other SAEs on the same hook point) skip
    the model. Under `mlx.launch` each rank captures its share of the training documents
    (`document_share`, max_tokens split evenly) and trains data-parallel; rank 0 alone captures
    the validation documents and saves the SAE (docs/distributed.md).
    """
    _check_max_tokens(max_tokens)
    config = config or SAEConfig()
    hook = model.hook_point(layer, component)
    texts = load_texts(dataset)
    train_texts, val_texts = split_documents(texts, config.validation_split, config.seed)
    rank = distributed.group().rank()
    options = dict(cache_dir=cache_dir, seed=config.seed, progress=progress and rank == 0)
    train = training_store(model, hook, texts, config, cache_dir, max_tokens, progress)
    val = None
    if val_texts and rank == 0:
        try:
            val = ActivationStore(model, val_texts, hook, config.contexts, max_tokens=MAX_VALIDATION_TOKENS,
                                  name="val", **options)
        except DataError as error:
            warnings.warn(f"no validation metrics: the held-out documents are too small ({error}); "
                          "raise validation_split or add documents", stacklevel=2)
    train.fill_cache()  # every rank captures now; the sample then reads the cache
    init_sample = np.asarray(train.sample(min(INIT_TOKENS, train.n_tokens))) if rank == 0 else None
    limit = distributed.broadcast_value(norm_limit(init_sample, config.max_norm_ratio) if rank == 0 else None)
    for store in (train, val):
        if store is not None:
            store.max_token_norm = limit
    init_kept = np.array(within_limit(init_sample, limit)) if rank == 0 else np.ones(1, bool)
    metadata = {
        **_metadata(model, hook, config, train_texts, len(val_texts) if val is not None else 0,
                    distributed.total(train.n_tokens), max_tokens),
        "max_token_norm": limit,
        "norm_outlier_fraction": float(1 - init_kept.mean()),
    }
    sae = train_sae_on_activations(
        lambda epoch: train.batches(config.batch_size, epoch=epoch),
        config,
        d_model=model.d_model,
        val=(lambda: val.batches(config.batch_size)) if val is not None else None,
        save_path=save_path,
        metadata=metadata,
        init_sample=init_sample[init_kept] if rank == 0 else None,
        tokens_per_epoch=train.n_tokens,
        progress=progress,
    )
    sae.attached_model = model
    return sae


def training_store(model: "InterpretableModel", hook: HookPoint, dataset: Any, config: SAEConfig,
                   cache_dir: str | os.PathLike | None = None, max_tokens: int | None = None,
                   progress: bool = True) -> ActivationStore:
    """The store `train_sae_on_model` trains on at `hook` over `dataset` with these arguments: this
    rank's share of the training documents (the validation documents split off), cached under
    `cache_dir`. After training, its cache holds the training activations (`cached_rows`)."""
    train_texts, _ = split_documents(load_texts(dataset), config.validation_split, config.seed)
    rank, ranks = distributed.group().rank(), distributed.group().size()
    return ActivationStore(model, document_share(train_texts, rank, ranks), hook, config.contexts,
                           max_tokens=max_tokens and -(-max_tokens // ranks), cache_dir=cache_dir,
                           seed=config.seed, progress=progress and rank == 0,
                           name="train" if ranks == 1 else f"train-rank{rank}of{ranks}")


def train_saes_on_model(
    model: "InterpretableModel",
    hook_points: str | Sequence[str] = (),
    dataset: Any = None,
    config: SAEConfig | None = None,
    transcoders: Sequence[int] = (),
    skip_transcoders: Sequence[int] = (),
    save_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    max_tokens: int | None = None,
    progress: bool = True,
) -> dict[str, SAE]:
    """Train one SAE per hook point matching `hook_points` ("layers.*.mlp", "layers.3.output",
    module paths) and one transcoder per layer in `transcoders` / `skip_transcoders` (reading the
    MLP's input after its norm, "mlp_in", reconstructing its output, "mlp"; a skip transcoder adds
    a linear skip term), all from one forward pass of `model` per batch of tokens.

    Returns the SAEs by name ("layers.3.mlp", "layers.6.transcoder", "layers.6.skip_transcoder"),
    each saved to `save_dir`/<name>.mlx when `save_dir` is set (with its checkpoint beside it).
    Each has its own optimizer, schedule, dead-latent counters, norm limit and W&B run (one group).
    """
    _check_max_tokens(max_tokens)
    config = config or SAEConfig()
    targets: dict[str, tuple[HookPoint, HookPoint | None, bool]] = {}
    for point in (model.anatomy.match_hook_points(hook_points) if hook_points else []):
        targets[point.name] = (point, None, False)
    for layers, skip in ((transcoders, False), (skip_transcoders, True)):
        for layer in layers:
            read, write = model.hook_point(layer, "mlp_in"), model.hook_point(layer, "mlp")
            targets[f"layers.{read.layer}.{'skip_' if skip else ''}transcoder"] = (read, write, skip)
    if not targets:
        raise DataError("nothing to train: pass hook_points (e.g. 'layers.*.mlp') or transcoders=[layer, ...]")
    hooks = list(dict.fromkeys(p for read, write, _ in targets.values() for p in (read, write) if p is not None))
    texts = load_texts(dataset)
    train_texts, val_texts = split_documents(texts, config.validation_split, config.seed)
    # Rows hold every hook point side by side: keep the shuffle buffer's and samples' bytes bounded.
    spread = max(1, len(hooks) // 4)
    options = dict(cache_dir=cache_dir, seed=config.seed, progress=progress,
                   shuffle_buffer_tokens=max(2 * config.batch_size, (1 << 16) // spread))
    train = ActivationStore(model, train_texts, hooks, config.contexts, max_tokens=max_tokens, name="train", **options)
    val_rows = None
    if val_texts:
        try:
            val = ActivationStore(model, val_texts, hooks, config.contexts, name="val",
                                  max_tokens=max(config.batch_size, MAX_VALIDATION_TOKENS // len(hooks)), **options)
            val_rows = np.concatenate(list(val.chunks()))
        except DataError as error:
            warnings.warn(f"no validation metrics: the held-out documents are too small ({error}); "
                          "raise validation_split or add documents", stacklevel=2)
    train.fill_cache()
    sample = np.asarray(train.sample(min(max(config.batch_size, INIT_TOKENS // spread), train.n_tokens)))
    jobs, saes = [], {}
    for name, (read, write, skip) in targets.items():
        cols = np.concatenate([np.arange(train.d_model)[train.columns(hooks.index(p))]
                               for p in (read, write) if p is not None])
        limits = [norm_limit(sample[:, train.columns(hooks.index(p))], config.max_norm_ratio)
                  for p in (read, write) if p is not None]
        select = _selector(cols, limits, model.d_model)
        rows = select(sample)
        sae = SAE.from_config(model.d_model, config, transcode=write is not None, skip=skip)
        sae.metadata.update(_metadata(model, read, config, train_texts, len(val_texts) if val_rows is not None else 0,
                                      train.n_tokens, max_tokens))
        sae.metadata.update(max_token_norm=limits[0], norm_outlier_fraction=float(1 - len(rows) / len(sample)))
        if write is not None:
            sae.metadata.update(output_hook_point=write.to_dict(), max_target_norm=limits[1])
        trainer = SAETrainer(sae, dataclasses.replace(config, wandb_name=name) if config.use_wandb else config)
        trainer.progress_label = name
        trainer.wandb_group = config.wandb_name or f"mlxterp-{dataset_fingerprint(train_texts, max_tokens)}"
        val_data = [select(val_rows)] if val_rows is not None else None
        path = Path(save_dir) / f"{name}.mlx" if save_dir is not None else None
        jobs.append(Job(trainer, select, val_data, path, rows))
        saes[name] = sae
    if save_dir is not None:
        Path(save_dir).mkdir(parents=True, exist_ok=True)
    train_many(jobs, lambda epoch: train.batches(config.batch_size, epoch=epoch), train.n_tokens,
               progress=progress)
    for sae in saes.values():
        sae.attached_model = model
    return saes


def _selector(cols: np.ndarray, limits: list[float | None], d_model: int):
    """rows (n, width) -> the columns `cols` of the rows whose every part is within its norm limit."""
    contiguous = bool(np.all(np.diff(cols) == 1))
    part = slice(int(cols[0]), int(cols[-1]) + 1) if contiguous else cols

    def select(rows: np.ndarray) -> np.ndarray:
        mine = np.asarray(rows)[:, part]
        keep = within_limits(mine, limits, d_model)
        return mine if keep.all() else mine[keep]

    return select


def _metadata(model, hook: HookPoint, config: SAEConfig, train_texts: Sequence[str], n_val_documents: int,
              n_tokens: int, max_tokens: int | None) -> dict:
    """Provenance every SAE trained on `model` records (model, hook point, contexts, data)."""
    return {
        "model_name": model.name,
        "model_fingerprint": model.fingerprint,
        "hook_point": hook.to_dict(),
        "layer": hook.layer,
        "component": hook.component,
        **config.contexts.to_dict(),
        "dataset_fingerprint": dataset_fingerprint(train_texts, max_tokens),
        "max_norm_ratio": config.max_norm_ratio,
        "n_train_documents": len(train_texts),
        "n_val_documents": n_val_documents,
        "n_train_tokens_per_epoch": n_tokens,
    }


def _check_max_tokens(max_tokens: int | None) -> None:
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
        raise DataError(f"max_tokens must be a positive number of tokens per epoch (or None: no cap), "
                        f"got {max_tokens!r}")


def dataset_fingerprint(texts: Sequence[str], max_tokens: int | None) -> str:
    """A short hash of the training texts and token cap: a resume needs the same data."""
    digest = hashlib.sha256(repr(max_tokens).encode())
    for text in texts:
        digest.update(text.encode("utf-8", "replace"))
        digest.update(b"\0")
    return digest.hexdigest()[:16]
