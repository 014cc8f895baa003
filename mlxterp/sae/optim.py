"""The optimizer side of a training step: LR schedule, and the Adam update with the unit-norm decoder.

The update is remove_parallel_component + optim.clip_grad_norm + Adam + unit_rows, but each large
parameter's chain runs on its own stream (`streams.streams()`: one thread each on the CPU).
"""

from __future__ import annotations

import contextlib
import math
import os
from typing import Iterator

import mlx.core as mx
import mlx.optimizers as optim
from mlx.utils import tree_flatten, tree_unflatten

from .config import SAEConfig
from .streams import on, row_dots, streams

# MLX's buffer cache limit while training: freed buffers up to this size are kept for reuse.
TRAINING_CACHE_BYTES = 4 << 30


def lr_at(step: mx.array, peak: float, config: SAEConfig, total_steps: int) -> mx.array:
    """Learning rate of 0-based `step`: linear warmup to `peak`, then `peak` to the end
    (`lr_schedule="constant"`, the default) or cosine decay to `peak * min_lr_ratio`, reached at
    `total_steps` and held after (`"cosine"`).

    Warmup lasts `warmup_steps` but at most a fifth of the run, so that a short run still reaches
    the peak.
    """
    step = step.astype(mx.float32)
    warmup = min(config.warmup_steps, max(total_steps // 5, 1)) if total_steps else config.warmup_steps
    lr = peak * (mx.minimum((step + 1) / warmup, 1.0) if warmup else mx.array(1.0))
    if config.lr_schedule == "constant":
        return lr
    progress = mx.clip((step - warmup) / max(total_steps - warmup, 1), 0.0, 1.0)
    floor = config.min_lr_ratio
    return lr * (floor + (1 - floor) * 0.5 * (1 + mx.cos(math.pi * progress)))


def apply_update(sae, opt: optim.Adam, grads: dict, lr: mx.array, dec_key: str, clip: float | None) -> mx.array:
    """Project, clip and apply `grads` at learning rate `lr`, renormalize the decoder rows;
    returns the unclipped gradient norm.

    `dec_key` names the decoder parameter whose rows are kept at unit norm.
    """
    spread = streams()
    flat = dict(tree_flatten(grads))
    big = [name for name, g in flat.items() if g.size >= 1 << 16]
    where = {name: spread[i % len(spread)] for i, name in enumerate(big)}
    params = dict(tree_flatten(sae.trainable_parameters()))
    squares = []
    for name in flat:
        if name == dec_key:  # remove_parallel_component, its row sums spread over the streams
            g, w = flat[name], params[name]
            flat[name] = g - row_dots(g, w)[:, None] * w
        with on(where.get(name)):
            squares.append(mx.sum(mx.square(flat[name])))
    grad_norm = mx.sqrt(sum(squares))
    scale = mx.minimum(clip / (grad_norm + 1e-6), 1.0) if clip is not None else None
    # What opt.apply_gradients does before its per-parameter updates, which run here one
    # stream each: set the (scheduled) learning rate and advance the step for bias correction.
    opt.learning_rate = lr
    opt.state["step"] = opt.step + 1
    new = {}
    for name, g in flat.items():
        with on(where.get(name)):
            if scale is not None:
                g = g * scale
            state = opt.state
            for part in name.split("."):
                state = state[part]
            new[name] = opt.apply_single(g, params[name], state)
    if dec_key in new:  # unit_rows, its row norms spread over the streams
        w = new[dec_key]
        norms = mx.sqrt(row_dots(w, w))
        with on(where.get(dec_key)):
            new[dec_key] = w / mx.maximum(norms, 1e-8)[:, None]
    sae.update(tree_unflatten(list(new.items())))
    return grad_norm


@contextlib.contextmanager
def training_cache_limit() -> Iterator[None]:
    """Raise MLX's buffer-cache limit (never lower it) for the duration of training; restore it after.

    The mlx CPU backend caches freed buffers only up to 32 MiB by default, so every step hands
    its large buffers (encoder, decoder, Adam moments ~38 MiB each at d_hidden 12288 x 768, the
    (n, d_hidden) pre-activations, the sorted gathers) back to the OS and maps them fresh next
    step: ~300k page faults, ~40% of a step. With the limit raised to min(TRAINING_CACHE_BYTES,
    a quarter of MLX's memory limit) they stay cached. Set MLXTERP_KEEP_FREED_MEMORY=0 to leave
    the limit alone.
    """
    if os.environ.get("MLXTERP_KEEP_FREED_MEMORY", "1") == "0":
        yield
        return
    want = min(TRAINING_CACHE_BYTES, max(mx.get_memory_limit() // 4, 1 << 30))
    previous = mx.set_cache_limit(want)
    if previous > want:
        mx.set_cache_limit(previous)
    try:
        yield
    finally:
        mx.set_cache_limit(previous)
