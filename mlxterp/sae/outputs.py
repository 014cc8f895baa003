"""What the SAE's passes return: the training pass (`SAE.forward`) and the inference pass (`SAE.reconstruct`)."""

from __future__ import annotations

from typing import NamedTuple

import mlx.core as mx


class ForwardOutput(NamedTuple):
    """Everything the training loss needs, in the normalized space, for n flattened tokens.

    top_acts, top_indices: (n, k) kept activations and their latent ids (TopK). For "relu" and
    "batchtopk" top_indices is None and top_acts is the dense (n, d_hidden) code matrix.
    Scalars (names as in sae.metrics.TRAINING_METRICS): l0 (mean active latents per token),
    recon_loss (squared error, mean per element), fvu (squared error / total variance of the
    batch), auxk_loss (0 without dead latents), l1_loss (mean summed activation per token over
    the batch's RMS centred norm, so it is scale-free like fvu). JumpReLU's l0 carries the threshold's
    pseudo-derivative. prefix_fvu (levels,): with `prefixes`, the FVU of each nested prefix.
    """

    sae_out: mx.array
    top_acts: mx.array
    top_indices: mx.array | None
    l0: mx.array
    recon_loss: mx.array
    fvu: mx.array
    auxk_loss: mx.array
    l1_loss: mx.array
    prefix_fvu: mx.array | None = None


class Reconstruction(NamedTuple):
    """Inference pass: reconstruction (..., d_model) on the raw scale, and the codes that made it
    (top_acts/top_indices (n, k) for TopK; dense (n, d_hidden) top_acts and None otherwise)."""

    reconstruction: mx.array
    top_acts: mx.array
    top_indices: mx.array | None
