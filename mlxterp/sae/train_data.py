"""The forms training data takes, and how each becomes an epoch of fixed-size batches.

Training data is one of (every batch is raw activations (..., d_model), any float dtype):
- an array (n_tokens, d_model) (mx or numpy): shuffled each epoch with `config.seed + epoch`;
  `config.validation_split` of it is held out when no validation data is given;
- a list/tuple of arrays: streamed in order each epoch;
- a callable returning a fresh iterable of arrays per epoch (e.g. `lambda: store.batches(4096)`);
  one that takes an argument is given the epoch number (`lambda epoch: store.batches(4096, epoch=epoch)`),
  so a run resumed mid-epoch is served the same batches again and skips those it trained on.
Streams are re-cut into batches of exactly `config.batch_size` tokens (one compiled shape); the
last partial batch of an epoch is dropped. Validation data takes the same forms (never shuffled).
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable, Iterable, Iterator, Sequence, Union

import mlx.core as mx
import numpy as np

from ..batching import rebatch
from ..errors import SAEError
from .config import SAEConfig

TrainData = Union[mx.array, np.ndarray, Sequence[Any], Callable[[], Iterable[Any]]]


def as_tokens(data: Any, d_model: int, name: str) -> mx.array:
    """`data` (..., d_model) as (n, d_model), or an SAEError naming the expected width."""
    arr = mx.array(data)
    if arr.ndim < 2 or arr.shape[-1] != d_model:
        raise SAEError(f"{name} activations must be (..., d_model={d_model}), got shape "
                       f"{tuple(arr.shape)}: pass the activations of the layer the SAE is built for")
    return arr.reshape(-1, d_model)


def split(data: mx.array, config: SAEConfig) -> tuple[mx.array, mx.array | None]:
    """Hold out `config.validation_split` of the tokens of an array (None when too few)."""
    n_val = int(data.shape[0] * config.validation_split)
    if n_val == 0 or data.shape[0] - n_val < config.batch_size:
        return data, None
    order = mx.array(np.random.default_rng(config.seed).permutation(data.shape[0]))
    return data[order[n_val:]], data[order[:n_val]]


def count_tokens(train: TrainData, tokens_per_epoch: int | None) -> int | None:
    """Tokens in one epoch of `train` (None for a callable without `tokens_per_epoch`)."""
    if tokens_per_epoch is not None:
        return int(tokens_per_epoch)
    if isinstance(train, mx.array):
        return train.shape[0]
    if isinstance(train, (list, tuple)):
        return sum(math.prod(b.shape[:-1]) for b in train)
    if callable(train):
        return None
    if isinstance(train, Iterator):
        raise SAEError("training data is a one-pass iterator, which epochs and validation would exhaust: "
                       "pass a callable returning a fresh iterable per epoch (e.g. lambda: store.batches(n))")
    raise SAEError(f"unsupported training data {type(train).__name__}: pass an array (n, d_model), "
                   "a list of arrays, or a callable returning an iterable of arrays per epoch")


def raw_batches(data: TrainData, d_model: int, config: SAEConfig, epoch: int | None,
                rank: int = 0, ranks: int = 1) -> Iterator[mx.array]:
    """Arrays (n_i, d_model) float32 for one epoch; `epoch` seeds the shuffle of array data
    (None: validation, never shuffled). With several `ranks`, an array is cut into global batches
    of batch_size x ranks tokens and `rank` gets its slice of each (other forms are each rank's own)."""
    name = "train" if epoch is not None else "validation"
    if isinstance(data, (mx.array, np.ndarray)):
        data = as_tokens(data, d_model, name)
        if epoch is None:
            yield data
            return
        order = np.random.default_rng(config.seed + epoch).permutation(data.shape[0])
        bs = config.batch_size
        for start in range(rank * bs, data.shape[0] - (ranks - rank) * bs + 1, ranks * bs):
            yield data[mx.array(order[start : start + bs])]
        return
    source = for_epoch(data, epoch or 0) if callable(data) else data
    for batch in source:
        yield as_tokens(batch, d_model, name).astype(mx.float32)


def for_epoch(make: Callable[..., Iterable[Any]], epoch: int) -> Iterable[Any]:
    """`make(epoch)` when the callable takes a required positional argument, else `make()`."""
    try:
        parameters = inspect.signature(make).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature
        return make()
    takes_epoch = any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
                      for p in parameters)
    return make(epoch) if takes_epoch else make()


def batches(stream: Iterable[mx.array], batch_size: int, drop_last: bool = True) -> Iterator[mx.array]:
    """(batch_size, d_model) float32 batches of a stream of (n_i, d_model) arrays."""
    return rebatch((chunk.astype(mx.float32) for chunk in stream), batch_size, drop_last)
