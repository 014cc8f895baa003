"""Training an SAE on a language model: the activation store joined to the SAE trainer."""

from __future__ import annotations

import hashlib
import os
import warnings
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from . import distributed
from .activations import ActivationStore, norm_limit, within_limit
from .activations.shards import document_share
from .data import load_texts, split_documents
from .errors import DataError
from .sae import SAE, SAEConfig, train_sae_on_activations
from .sae.train import INIT_TOKENS

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
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
        raise DataError(f"max_tokens must be a positive number of tokens per epoch (or None: no cap), "
                        f"got {max_tokens!r}")
    config = config or SAEConfig()
    hook = model.hook_point(layer, component)
    texts = load_texts(dataset)
    train_texts, val_texts = split_documents(texts, config.validation_split, config.seed)
    rank, ranks = distributed.group().rank(), distributed.group().size()
    options = dict(cache_dir=cache_dir, seed=config.seed, progress=progress and rank == 0)
    train = ActivationStore(model, document_share(train_texts, rank, ranks), hook, config.contexts,
                            max_tokens=max_tokens and -(-max_tokens // ranks),
                            name="train" if ranks == 1 else f"train-rank{rank}of{ranks}", **options)
    val = None
    if val_texts and rank == 0:
        try:
            val = ActivationStore(model, val_texts, hook, config.contexts, max_tokens=MAX_VALIDATION_TOKENS,
                                  name="val", **options)
        except DataError as error:
            warnings.warn(f"no validation metrics: the held-out documents are too small ({error}); "
                          "raise validation_split or add documents", stacklevel=2)
    init_sample = np.asarray(train.sample(min(INIT_TOKENS, train.n_tokens))) if rank == 0 else None
    limit = distributed.broadcast_value(norm_limit(init_sample, config.max_norm_ratio) if rank == 0 else None)
    for store in (train, val):
        if store is not None:
            store.max_token_norm = limit
    init_kept = np.array(within_limit(init_sample, limit)) if rank == 0 else np.ones(1, bool)
    metadata = {
        "model_name": model.name,
        "model_fingerprint": model.fingerprint,
        "hook_point": hook.to_dict(),
        "layer": hook.layer,
        "component": hook.component,
        **config.contexts.to_dict(),
        "dataset_fingerprint": dataset_fingerprint(train_texts, max_tokens),
        "max_norm_ratio": config.max_norm_ratio,
        "max_token_norm": limit,
        "norm_outlier_fraction": float(1 - init_kept.mean()),
        "n_train_documents": len(train_texts),
        "n_val_documents": len(val_texts) if val is not None else 0,
        "n_train_tokens_per_epoch": distributed.total(train.n_tokens),
    }
    sae = train_sae_on_activations(
        lambda: train.batches(config.batch_size),
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


def dataset_fingerprint(texts: Sequence[str], max_tokens: int | None) -> str:
    """A short hash of the training texts and token cap: a resume needs the same data."""
    digest = hashlib.sha256(repr(max_tokens).encode())
    for text in texts:
        digest.update(text.encode("utf-8", "replace"))
        digest.update(b"\0")
    return digest.hexdigest()[:16]
