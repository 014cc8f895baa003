"""The optimizer side of a training step: LR schedule, the optimizer (Adam or sign descent,
optionally schedule-free) and the update with the unit-norm decoder.

The update is remove_parallel_component + optim.clip_grad_norm + the optimizer's step + unit_rows,
but each large parameter's chain runs on its own stream (`streams.streams()`: one thread each on
the CPU).
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
from .ops import unit_rows
from .streams import on, row_dots, streams

# Schedule-free (Defazio et al. 2024): the gradient is taken at y = (1 - b) z + b x, between the
# optimizer's own iterate z and x, the running average of z; b is sparsify's momentum.
SCHEDULE_FREE_MOMENTUM = 0.95
# MLX's buffer cache limit while training: freed buffers up to this size are kept for reuse.
TRAINING_CACHE_BYTES = 4 << 30


def lr_at(step: mx.array, peak: float, config: SAEConfig, total_steps: int) -> mx.array:
    """Learning rate of 0-based `step`: linear warmup to `peak`, then `peak` to the end
    (`lr_schedule` "constant" or "schedule_free") or cosine decay to `peak * min_lr_ratio`, reached at
    `total_steps` and held after (`"cosine"`).

    Warmup lasts `warmup_steps` but at most a fifth of the run, so that a short run still reaches
    the peak.
    """
    step = step.astype(mx.float32)
    warmup = min(config.warmup_steps, max(total_steps // 5, 1)) if total_steps else config.warmup_steps
    lr = peak * (mx.minimum((step + 1) / warmup, 1.0) if warmup else mx.array(1.0))
    if config.lr_schedule != "cosine":
        return lr
    progress = mx.clip((step - warmup) / max(total_steps - warmup, 1), 0.0, 1.0)
    floor = config.min_lr_ratio
    return lr * (floor + (1 - floor) * 0.5 * (1 + mx.cos(math.pi * progress)))


class SignSGD(optim.Optimizer):
    """p <- p - lr * sign(g): every parameter moves by lr per element, whatever its gradient's scale
    (sparsify's "signum" is this inside the schedule-free average)."""

    def __init__(self, learning_rate: float):
        super().__init__()
        self._maybe_schedule("learning_rate", learning_rate)

    def init_single(self, parameter: mx.array, state: dict) -> None:
        pass

    def apply_single(self, gradient: mx.array, parameter: mx.array, state: dict) -> mx.array:
        return parameter - self.learning_rate.astype(gradient.dtype) * mx.sign(gradient)


def make_optimizer(config: SAEConfig, peak: float, params: dict) -> optim.Optimizer:
    """The optimizer `config.optimizer` names, its state initialized for `params` (and, with the
    schedule-free schedule, its iterate z and average x set to `params`)."""
    opt = optim.Adam(learning_rate=peak, bias_correction=True) if config.optimizer == "adam" else SignSGD(peak)
    opt.init(params)
    init_schedule_free(opt, config, params)
    return opt


def init_schedule_free(opt: optim.Optimizer, config: SAEConfig, params: dict) -> None:
    """Add the schedule-free iterate and average of each parameter that lacks them (a restored
    checkpoint has them already)."""
    if config.lr_schedule != "schedule_free":
        return
    opt.state.setdefault("sf_weight_sum", mx.array(0.0))
    for name, value in tree_flatten(params):
        state = _state_of(opt, name)
        state.setdefault("sf_z", mx.array(value))
        state.setdefault("sf_x", mx.array(value))


def averaged_parameters(opt: optim.Optimizer, params: dict, dec_key: str | None) -> dict | None:
    """The schedule-free average x of every parameter in `params`, decoder rows (`dec_key`) scaled
    to unit norm as in the point y the gradients were taken at (an average of unit rows is
    shorter); None when training is not schedule-free."""
    if "sf_weight_sum" not in opt.state:
        return None
    average = {name: _state_of(opt, name)["sf_x"] for name, _ in tree_flatten(params)}
    if dec_key in average:
        average[dec_key] = unit_rows(average[dec_key])
    return tree_unflatten(list(average.items()))


@contextlib.contextmanager
def on_average(sae, opt: optim.Optimizer, dec_key: str | None):
    """Inside the block the SAE holds the schedule-free average (if any), the SAE training ends
    with; its training point is put back after."""
    training_point = sae.trainable_parameters()
    average = averaged_parameters(opt, training_point, dec_key)
    if average is not None:
        sae.update(average)
    try:
        yield
    finally:
        sae.update(training_point)


def _state_of(opt: optim.Optimizer, name: str) -> dict:
    state = opt.state
    for part in name.split("."):
        state = state[part]
    return state


def apply_update(sae, opt: optim.Optimizer, grads: dict, lr: mx.array, dec_key: str | None,
                 clip: float | None) -> mx.array:
    """Project, clip and apply `grads` at learning rate `lr`, renormalize the decoder rows;
    returns the unclipped gradient norm.

    `dec_key` names the decoder parameter whose rows are kept at unit norm (None: none). When the optimizer
    carries schedule-free state (`init_schedule_free`), the step moves z, x averages z with weights
    lr^2 (warmup steps count less), and the SAE is set to y = (1 - b) z + b x.
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
    free = "sf_weight_sum" in opt.state
    if free:
        weight_sum = opt.state["sf_weight_sum"] + lr * lr
        opt.state["sf_weight_sum"] = weight_sum
        c = lr * lr / weight_sum
    new = {}
    for name, g in flat.items():
        with on(where.get(name)):
            if scale is not None:
                g = g * scale
            state = _state_of(opt, name)
            new[name] = opt.apply_single(g, state["sf_z"] if free else params[name], state)
    if dec_key in new:
        new[dec_key] = _unit_rows(new[dec_key], where.get(dec_key))
    if free:
        b = SCHEDULE_FREE_MOMENTUM
        for name, z in new.items():
            state = _state_of(opt, name)
            with on(where.get(name)):
                x = state["sf_x"] + c * (z - state["sf_x"])
                state["sf_z"], state["sf_x"] = z, x
                new[name] = z + b * (x - z)
        if dec_key in new:
            new[dec_key] = _unit_rows(new[dec_key], where.get(dec_key))
    sae.update(tree_unflatten(list(new.items())))
    return grad_norm


def _unit_rows(w: mx.array, stream) -> mx.array:
    """unit_rows, its row norms spread over the streams."""
    norms = mx.sqrt(row_dots(w, w))
    with on(stream):
        return w / mx.maximum(norms, 1e-8)[:, None]


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
