"""JumpReLU training (Rajamanoharan et al. 2024, "Jumping Ahead"): per-latent thresholds learned
through straight-through estimators, and an L0 penalty that holds the L0 at a target.

The codes are relu(z) where z > threshold, else 0, for pre-activations z. Both the codes and the
L0 (the count of z > threshold) are step functions of the threshold, so their threshold
gradients are the paper's pseudo-derivatives: the step's derivative is replaced by a rectangle
kernel of width `bandwidth` around the threshold,
    d codes / d threshold = -(threshold / bandwidth) * rect((z - threshold) / bandwidth)
    d L0    / d threshold = -(1 / bandwidth)         * rect((z - threshold) / bandwidth) = -d L0 / d z
z gets the ordinary gradient of the codes and, unlike the paper (which trains only the thresholds
through the L0), also the L0's pseudo-derivative, as Anthropic's 2025 JumpReLU recipe does: the
encoder then helps hold the L0 at its target. Without it, on the toy data of tests/sae, the L0 fell
to half its target within 50 steps while the thresholds, which move about one learning rate a
step, caught up only slowly.
"""

from __future__ import annotations

from typing import Callable

import mlx.core as mx

from ..errors import SAEError
from .io import sae_spec, sae_tensors

# JumpReLU's L0 must land within this fraction of its target (the config's k).
L0_TOLERANCE = 0.2


def _rect(u: mx.array) -> mx.array:
    return (mx.abs(u) < 0.5).astype(mx.float32)


def jumprelu_functions(bandwidth: float) -> tuple[Callable, Callable]:
    """(codes(z, threshold), l0(z, threshold)) with the pseudo-derivatives of kernel width `bandwidth`.

    z is (n, d_hidden), threshold (d_hidden,); l0 is the mean count of active latents per token.
    """

    @mx.custom_function
    def codes(z: mx.array, threshold: mx.array) -> mx.array:
        return mx.where(z > mx.maximum(threshold, 0.0), z, 0.0)

    @codes.vjp
    def codes_vjp(primals, cotangent, output):
        z, threshold = primals
        dz = mx.where(z > mx.maximum(threshold, 0.0), cotangent, 0.0)
        kernel = _rect((z - threshold) / bandwidth)
        return dz, mx.sum(-(threshold / bandwidth) * kernel * cotangent, axis=0)

    @mx.custom_function
    def l0(z: mx.array, threshold: mx.array) -> mx.array:
        return mx.mean(mx.sum(z > mx.maximum(threshold, 0.0), axis=-1).astype(mx.float32))

    @l0.vjp
    def l0_vjp(primals, cotangent, output):
        z, threshold = primals
        dz = (cotangent / (bandwidth * z.shape[0])) * _rect((z - threshold) / bandwidth)
        return dz, -mx.sum(dz, axis=0)

    return codes, l0


def l0_penalty(l0: mx.array, target: int) -> mx.array:
    """(l0 / target - 1)^2: zero at the target, pulling the L0 toward it from either side."""
    return mx.square(l0 / target - 1.0)


def initial_threshold(pre: mx.array, k: int) -> mx.array:
    """The value above which the (n, d_hidden) ReLU pre-activations `pre` of an initialization
    sample keep n*k entries, so that training starts at an L0 of k (BatchTopK's threshold of the
    sample). A target that even a zero threshold cannot reach raises SAEError."""
    positive = float(mx.mean(mx.sum(pre > 0, axis=-1).astype(mx.float32)))
    if positive < (1 - L0_TOLERANCE) * k:
        raise SAEError(
            f"the JumpReLU L0 target k={k} cannot be met: with no threshold at all only {positive:.1f} of the "
            f"{pre.shape[-1]} latents fire per token at initialization (a ReLU encoder fires about half of "
            "them), and a threshold only removes activations: lower k, or raise expansion_factor")
    return mx.min(mx.topk(pre.reshape(-1), min(pre.shape[0] * k, pre.size)))


def check_l0(l0: float, target: int, coefficient: float, steps: int) -> None:
    """Raise SAEError when the trained L0 missed its target by more than L0_TOLERANCE."""
    if abs(l0 / target - 1) <= L0_TOLERANCE:
        return
    if l0 > target:
        how = (f"the L0 penalty did not pull it down: raise l0_coefficient (now {coefficient}) or train "
               "longer (thresholds move about one learning rate per step)")
    else:
        how = (f"the SAE uses fewer latents than the target: raise l0_coefficient (now {coefficient}) so the "
               "penalty pulls the L0 up, train longer, or lower k to the L0 this data supports")
    raise SAEError(
        f"the JumpReLU L0 target k={target} was not met: the L0 over the last logged steps is {l0:.1f}, "
        f"{abs(l0 / target - 1):.0%} off after {steps} steps (allowed {L0_TOLERANCE:.0%}); {how}. Nothing was "
        "saved; the trained SAE is still trainer.sae (save it with trainer.sae.save(path) to keep it)")


def to_jumprelu(sae):
    """A JumpReLU copy of a (Matryoshka) BatchTopK SAE: its learned scalar threshold becomes every
    latent's threshold, so the codes are identical (what SAELens saves BatchTopK SAEs as)."""
    if sae.architecture not in ("batchtopk", "matryoshka_batchtopk"):
        raise SAEError(f"only a 'batchtopk' SAE converts to JumpReLU, this one is {sae.architecture!r}")
    spec = {**sae_spec(sae), "architecture": "jumprelu"}
    tensors = {**sae_tensors(sae), "threshold": mx.full((sae.d_hidden,), sae.threshold)}
    converted = type(sae).from_parts(spec, tensors, "this SAE")
    converted.metadata = {**sae.metadata, "converted_from": sae.architecture}
    return converted
