"""Re-cutting a stream of (n_i, d) arrays (numpy or MLX) into batches of exactly `size` rows."""

from __future__ import annotations

from typing import Iterable, Iterator, TypeVar

import mlx.core as mx
import numpy as np

Array = TypeVar("Array", np.ndarray, mx.array)


def rebatch(chunks: Iterable[Array], size: int, drop_last: bool = True) -> Iterator[Array]:
    """Yield (size, d) slices of the concatenated `chunks`; the remainder last unless `drop_last`.

    A chunk of exactly `size` rows arriving with nothing pending passes through uncopied.
    """
    pending: list = []
    have = 0
    for chunk in chunks:
        if not pending and chunk.shape[0] == size:
            yield chunk
            continue
        pending.append(chunk)
        have += chunk.shape[0]
        if have >= size:
            joined = _concatenate(pending)
            full = have // size * size
            for start in range(0, full, size):
                yield joined[start : start + size]
            pending, have = ([joined[full:]] if have > full else []), have - full
    if have and not drop_last:
        yield _concatenate(pending)


def _concatenate(parts: list):
    if len(parts) == 1:
        return parts[0]
    return mx.concatenate(parts) if isinstance(parts[0], mx.array) else np.concatenate(parts)
