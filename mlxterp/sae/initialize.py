"""An SAE's start: the sample it is initialized on, then its normalization, b_dec and (JumpReLU)
thresholds fitted to that sample; a transcoder's decoder at zero and its encoder centred."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any, Iterator

import mlx.core as mx
import numpy as np

from ..errors import SAEError
from . import train_data
from .config import SAEConfig
from .jumprelu import initial_threshold

if TYPE_CHECKING:
    from .model import SAE

INIT_TOKENS = 1 << 15


def initialization_sample(train: train_data.TrainData, init_sample: Any, width: int,
                          config: SAEConfig) -> tuple[mx.array, Iterator[mx.array] | None]:
    """(up to INIT_TOKENS rows of width `width`, the epoch-0 stream when its head was consumed):
    `init_sample` when given, a seeded random pick of array data, else the head of the stream."""
    if init_sample is not None:
        return train_data.as_tokens(init_sample, width, "init_sample"), None
    if isinstance(train, mx.array):
        pick = np.random.default_rng(config.seed).permutation(train.shape[0])[:INIT_TOKENS]
        return train[mx.array(np.sort(pick))], None
    stream = train_data.raw_batches(train, width, config, 0)
    head, have = [], 0
    for chunk in stream:
        head.append(chunk)
        have += chunk.shape[0]
        if have >= INIT_TOKENS:
            break
    if not head:
        raise SAEError("the training data is empty: pass activations (n_tokens, d_model)")
    return mx.concatenate(head)[:INIT_TOKENS], itertools.chain(head, stream)


def initialize(sae: "SAE", sample: mx.array, config: SAEConfig) -> None:
    """Check the sample, then fit the SAE's input normalization, b_dec and JumpReLU thresholds to it
    (a transcoder: `start_transcoder` before the thresholds)."""
    if not bool(mx.all(mx.isfinite(sample))):
        raise SAEError("the training activations contain NaN or inf: check the activations "
                       "(a float16 overflow? a broken hook?) and drop or fix those tokens")
    if float(mx.max(mx.abs(sample - sample[:1]))) == 0:
        raise SAEError(f"the training activations are constant (all {sample.shape[0]} tokens of the "
                       "initialization sample are the same vector): there is nothing to learn and "
                       "FVU is undefined; check the data and the hook point")
    sae.fit_normalization(sample)
    sae.init_b_dec(sample, config.b_dec_init)
    if sae.transcode:
        start_transcoder(sae, sample)
    if sae.architecture == "jumprelu":  # start at an L0 of k: BatchTopK's threshold of the sample
        centred = sae._centred(sae.split_rows(sample[:4096])[0])
        threshold = initial_threshold(centred @ sae.W_enc.T + sae.b_enc, config.k)
        sae.threshold = mx.full((sae.d_hidden,), threshold)


def start_transcoder(sae: "SAE", sample: mx.array) -> None:
    """A transcoder's start, sparsify's: decoder and skip term at zero, b_enc = -mean(x_n) @ W_enc.T.

    With random unit decoder rows (an SAE's start) the first outputs are random vectors of the
    latents' size in a space the encoder does not read, so FVU starts far above 1 and most latents
    die before the decoder has learnt anything; at zero the output starts at b_dec (the target's
    centre, FVU ~1) and every step lowers it. A transcoder's input is not centred by b_dec (that
    lives in the output space), so b_enc centres its pre-activations on the sample's mean instead:
    without it the inputs' mean direction picks the same top-k latents for every token. The
    decoder rows are not held at unit norm (SAETrainer: a zero row has no direction)."""
    inputs = sae._centred(sae.split_rows(sample)[0])
    sae.b_enc = -(mx.mean(inputs, axis=0) @ sae.W_enc.T)
    sae["W_dec"] = mx.zeros_like(sae["W_dec"])
    if sae.skip:
        sae.W_skip = mx.zeros_like(sae.W_skip)
