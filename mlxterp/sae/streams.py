"""Spreading independent row blocks over streams: on the CPU one stream per core, elsewhere one.

MLX runs each CPU stream's non-BLAS work on one thread, so row-wise kernels (top-k, gathers,
scatters, row norms) and per-parameter optimizer updates split their work over `streams()`.
MLXTERP_SAE_STREAMS sets the count on the CPU (1: everything on the default stream).
"""

from __future__ import annotations

import contextlib
import os

import mlx.core as mx

MAX_CPU_STREAMS = 4
_STREAMS: dict[str, list] = {}


def streams() -> list:
    """The streams to use: new CPU streams, one per core (at most MAX_CPU_STREAMS, or
    MLXTERP_SAE_STREAMS); [None] (the default stream) on other devices or with one core."""
    device = mx.default_device()
    key = str(device)
    if key not in _STREAMS:
        count = 1
        if device == mx.cpu:
            try:
                cores = len(os.sched_getaffinity(0))
            except (AttributeError, OSError):
                cores = os.cpu_count() or 1
            count = int(os.environ.get("MLXTERP_SAE_STREAMS", min(cores, MAX_CPU_STREAMS)))
        _STREAMS[key] = [None] if count <= 1 else [mx.new_stream(device) for _ in range(count)]
    return _STREAMS[key]


def on(stream):
    """A context placing work on `stream` (None: wherever it would go anyway)."""
    return contextlib.nullcontext() if stream is None else mx.stream(stream)


def row_spans(n: int, parts: int, multiple: int = 1) -> list[tuple[int, int]]:
    """[start, stop) ranges cutting n rows into at most `parts` near-equal pieces of at least
    `multiple` rows."""
    parts = max(1, min(parts, n // max(multiple, 1)))
    step = -(-n // parts)
    return [(s, min(s + step, n)) for s in range(0, n, step)]


def row_dots(a: mx.array, b: mx.array) -> mx.array:
    """sum(a * b, axis=-1) of (rows, d) arrays, row blocks spread over `streams()`."""
    spans = row_spans(a.shape[0], len(streams()))
    parts = []
    for stream, (start, stop) in zip(streams(), spans):
        with on(stream):
            parts.append(mx.sum(a[start:stop] * b[start:stop], axis=-1))
    return mx.concatenate(parts) if len(parts) > 1 else parts[0]
