"""A bounded shuffle buffer: rows of a stream of chunks, served in random order while holding at
most a fixed number of rows, whatever the stream's length."""

from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np

from ..batching import rebatch


def shuffled_rows(chunks: Iterable[np.ndarray], capacity: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """The rows of `chunks` in random order, in pieces, through a buffer of `capacity` rows.

    The buffer fills with the first `capacity` rows; then the rows of each arriving chunk take the
    places of as many rows drawn at random from the buffer, which go out. At the end the buffer
    drains in random order. Held at any time: the buffer, one chunk and the rows going out.
    """
    if capacity < 1:
        raise ValueError(f"the shuffle buffer needs at least one row, got capacity={capacity}")
    buffer: np.ndarray | None = None
    filled = 0
    for chunk in chunks:
        if buffer is None:
            buffer = np.empty((capacity, chunk.shape[1]), dtype=chunk.dtype)
        take = min(capacity - filled, len(chunk))
        buffer[filled : filled + take] = chunk[:take]
        filled += take
        for start in range(take, len(chunk), capacity):
            arriving = chunk[start : start + capacity]
            slots = rng.choice(capacity, size=len(arriving), replace=False)
            leaving = buffer[slots]
            buffer[slots] = arriving
            yield leaving
    if buffer is not None:
        order = rng.permutation(filled)
        for start in range(0, filled, 4096):
            yield buffer[order[start : start + 4096]]


def shuffled_batches(chunks: Iterable[np.ndarray], batch_size: int, capacity: int, rng: np.random.Generator,
                     drop_last: bool = False) -> Iterator[np.ndarray]:
    """(batch_size, width) batches of the rows of `chunks` in random order (`shuffled_rows`); the
    last one partial unless `drop_last`."""
    return rebatch(shuffled_rows(chunks, capacity, rng), batch_size, drop_last)
