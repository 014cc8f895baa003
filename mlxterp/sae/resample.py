"""Dead-latent resampling: point latents that stopped firing at inputs the SAE reconstructs worst."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import mlx.core as mx
import numpy as np

from .normalize import normalize
from .ops import unit_rows

if TYPE_CHECKING:
    from .train import SAETrainer


def resample_dead(trainer: "SAETrainer", x: mx.array) -> None:
    """Point dead latents at high-error inputs of batch `x` (Bricken et al. 2023 / glassbox).

    Inputs are drawn with probability proportional to their squared reconstruction error;
    each dead latent's decoder row becomes the unit direction of its (centred) input, its
    encoder row that direction scaled to 0.2x the mean live encoder norm, its bias 0, and
    its Adam moments are reset.
    """
    sae, opt, cfg = trainer.sae, trainer.optimizer, trainer.config
    dead = np.flatnonzero(np.array(trainer.counters["tokens_since_fired"] > cfg.dead_tokens_threshold))
    if dead.size == 0:
        return
    x_n, _ = normalize(sae.normalization, sae.norm_stats, x)
    err = mx.sum(mx.square(x_n - sae.forward(x).sae_out), axis=-1)
    key = mx.random.key(cfg.seed * 1_000_003 + trainer.step)
    picks = mx.random.categorical(2 * mx.log(mx.maximum(err, 1e-30)), num_samples=dead.size, key=key)
    directions = unit_rows(x_n[picks] - sae.b_dec)
    rows = mx.array(dead)
    live = np.setdiff1d(np.arange(sae.d_hidden), dead)
    enc_norm = mx.mean(mx.linalg.norm(sae.W_enc[mx.array(live)], axis=-1)) if live.size else mx.array(1.0)
    if sae.tied_weights:
        sae.W_enc = _set_rows(sae.W_enc, rows, directions)
    else:
        sae["W_dec"] = _set_rows(sae["W_dec"], rows, directions)
        sae.W_enc = _set_rows(sae.W_enc, rows, 0.2 * enc_norm * directions)
    sae.b_enc = _set_rows(sae.b_enc, rows, 0.0)
    for name in ["W_enc", "b_enc"] + ([] if sae.tied_weights else ["W_dec"]):
        state = opt.state[name]
        for moment in ("m", "v"):
            if moment in state:
                state[moment] = _set_rows(state[moment], rows, 0.0)
        for point in ("sf_z", "sf_x"):
            if point in state:
                state[point] = _set_rows(state[point], rows, getattr(sae, name)[rows])
    trainer.counters["tokens_since_fired"] = _set_rows(trainer.counters["tokens_since_fired"], rows, 0)
    mx.eval(sae.state, opt.state, trainer.counters)


def _set_rows(a: mx.array, rows: mx.array, values: Any) -> mx.array:
    """A copy of `a` with `a[rows] = values`."""
    out = mx.array(a)
    out[rows] = values
    return out
