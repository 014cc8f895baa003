"""Joining a language model to the SAE: train on one hook point's activations, load for a model."""

from __future__ import annotations

import os
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

from ..anatomy import canonical_component
from ..errors import DataError, SAEError
from .config import SAEConfig
from .model import SAE
from .store import ActivationStore, StoreSettings, norm_limit, split_documents, within_limit
from .train import INIT_TOKENS, train_sae_on_activations

if TYPE_CHECKING:
    from ..model import InterpretableModel

MAX_VALIDATION_TOKENS = 200_000


def train_sae_on_model(
    model: "InterpretableModel",
    layer: int,
    dataset: Any = None,
    component: str = "mlp",
    config: SAEConfig | None = None,
    save_path: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    max_tokens: int | None = None,
    progress: bool = True,
) -> SAE:
    """Train an SAE on `model`'s activations at (`layer`, `component`) over `dataset`.

    Documents are split into training and validation sets (`config.validation_split`, by
    document); the activation store packs them into contexts and drops each context's first
    `config.drop_first_tokens` positions and special tokens, and tokens whose norm exceeds
    `config.max_norm_ratio` times the median (set from the initialization sample and stored as
    metadata "max_token_norm"). With `cache_dir`, activations are cached on disk so later epochs
    (and other SAEs on the same hook point) skip the model.
    """
    from ..data import load_texts

    config = config or SAEConfig()
    layer = model.anatomy.check_layer(layer)
    component = canonical_component(component)
    texts = load_texts(dataset)
    train_texts, val_texts = split_documents(texts, config.validation_split, config.seed)
    settings = StoreSettings(
        layer=layer,
        component=component,
        context_length=config.context_length,
        drop_first_tokens=config.drop_first_tokens,
        drop_special_tokens=config.drop_special_tokens,
        seed=config.seed,
    )
    train = ActivationStore(model, train_texts, settings, cache_dir, max_tokens, progress=progress, name="train")
    val = _validation_store(model, val_texts, settings, cache_dir, progress)
    init_sample = np.asarray(train.sample(min(INIT_TOKENS, train.n_tokens)))
    limit = norm_limit(init_sample, config.max_norm_ratio)
    for store in (train, val):
        if store is not None:
            store.max_token_norm = limit
    init_kept = np.array(within_limit(init_sample, limit))
    metadata = {
        "model_name": model.name,
        "layer": layer,
        "component": component,
        "hook_path": train.path,
        "context_length": config.context_length,
        "drop_first_tokens": config.drop_first_tokens,
        "drop_special_tokens": config.drop_special_tokens,
        "max_norm_ratio": config.max_norm_ratio,
        "max_token_norm": limit,
        "norm_outlier_fraction": float(1 - init_kept.mean()),
        "n_train_documents": len(train_texts),
        "n_val_documents": len(val_texts) if val is not None else 0,
        "n_train_tokens_per_epoch": train.n_tokens,
    }
    sae = train_sae_on_activations(
        lambda: train.batches(config.batch_size),
        config,
        d_model=model.d_model,
        val=(lambda: val.batches(config.batch_size)) if val is not None else None,
        save_path=save_path,
        metadata=metadata,
        init_sample=init_sample[init_kept],
        tokens_per_epoch=train.n_tokens,
        progress=progress,
    )
    sae.attached_model = model
    return sae


def _validation_store(model, texts, settings, cache_dir, progress) -> ActivationStore | None:
    if not texts:
        return None
    try:
        return ActivationStore(model, texts, settings, cache_dir, MAX_VALIDATION_TOKENS,
                               progress=progress, name="val")
    except DataError as error:
        warnings.warn(f"no validation metrics: the held-out documents are too small ({error}); "
                      "raise validation_split or add documents", stacklevel=3)
        return None


def load_sae_for_model(
    model: "InterpretableModel",
    path: str | os.PathLike,
    layer: int | None = None,
    component: str | None = None,
    strict: bool = True,
) -> SAE:
    """Load the SAE at `path` and check it was trained on `model` (and `layer`/`component`).

    A different activation width is always an error; with `strict`, so is a different model
    name, layer or component in the SAE's metadata (pass strict=False to load it anyway, e.g.
    for the same weights loaded under another name).
    """
    sae = SAE.load(path)
    meta = sae.metadata
    if sae.d_model != model.d_model:
        raise SAEError(
            f"the SAE at {path} reads {sae.d_model}-dim activations but {model.name} has "
            f"d_model={model.d_model}: it was trained on another model ({meta.get('model_name')!r})"
        )
    problems = []
    if meta.get("model_name") not in (None, model.name):
        problems.append(f"model {meta.get('model_name')!r} (this is {model.name!r})")
    if layer is not None and meta.get("layer") is not None and meta["layer"] != model.anatomy.check_layer(layer):
        problems.append(f"layer {meta['layer']} (asked for {layer})")
    if component is not None and meta.get("component") is not None and (
        canonical_component(meta["component"]) != canonical_component(component)
    ):
        problems.append(f"component {meta['component']!r} (asked for {component!r})")
    if problems and strict:
        raise SAEError(
            f"the SAE at {path} was trained on {', '.join(problems)}: load the SAE that matches, "
            "or pass strict=False to load it anyway"
        )
    sae.attached_model = model
    return sae
