"""The sparse autoencoder: TopK (default), BatchTopK, ReLU+L1, JumpReLU or Matryoshka BatchTopK, input
normalization built in; with `transcode` a transcoder (reads one hook point, reconstructs another; `skip`: plus x @ W_skip.T)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from ..activations.norm_limit import within_limit
from ..errors import SAEError
from ..hookpoint import HookPoint
from . import normalize as norm
from .checks import compatibility_problems
from .config import B_DEC_INITS, DEFAULT_BANDWIDTH, INFERENCE_ARCHITECTURES, SAEConfig, resolve_normalization
from .entry_points import FeatureToolMethods
from .jumprelu import to_jumprelu
from .outputs import ForwardOutput, Reconstruction
from .persist import load_sae_file, sae_from_parts, save_sae
from .matryoshka import nested_decode
from .ops import dense_codes, geometric_median, unit_rows
from .sparse_ops import sparse_decode, topk_encode


class SAE(FeatureToolMethods, nn.Module):
    """Sparse autoencoder on raw activations (..., d_model) with d_hidden latents.

    Parameters: W_enc (d_hidden, d_model), b_enc (d_hidden,), W_dec (d_hidden, d_model) with
    unit-norm rows (a transcoder's: free; with `tied_weights` the decoder is W_enc itself), b_dec (d_model,), and
    frozen state: `threshold` (BatchTopK's scalar inference threshold, JumpReLU's (d_hidden,)
    per-latent one) and `norm_stats` (input normalization). `encode` normalizes its input and
    `decode` undoes it, so callers always work with raw activations.

    >>> sae = SAE(d_model=576, d_hidden=9216, k=32)
    >>> codes = sae.encode(acts)        # (..., 9216), 32 nonzeros per token
    >>> recon = sae.decode(codes)       # (..., 576), raw activation scale

    A transcoder (`transcode`) reads `hook_point` ("mlp_in") and reconstructs `output_hook_point`
    ("mlp"), no b_dec subtracted from its input, its target normalized by `target_norm_stats`;
    `skip` adds x_n @ W_skip.T. It trains on rows [input | target] (..., `data_width`).
    """

    def __init__(
        self,
        d_model: int,
        d_hidden: int,
        k: int = 32,
        architecture: str = "topk",
        tied_weights: bool = False,
        normalization: str | bool = "none",
        seed: int = 0,
        transcode: bool = False,
        skip: bool = False,
    ):
        super().__init__()
        for name, value in (("d_model", d_model), ("d_hidden", d_hidden), ("k", k)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SAEError(f"{name} must be a positive integer, got {value!r}")
        if k > d_hidden:
            raise SAEError(f"k={k} exceeds d_hidden={d_hidden}: lower k or raise expansion_factor")
        if architecture not in INFERENCE_ARCHITECTURES:
            raise SAEError(f"architecture={architecture!r} is not supported: use one of {INFERENCE_ARCHITECTURES}")
        if skip and not transcode:
            raise SAEError("skip=True adds a linear skip term to a transcoder: pass transcode=True too")
        if transcode and (tied_weights or resolve_normalization(normalization) == "unit_norm"):
            raise SAEError("a transcoder's decoder writes another space than its encoder reads, and its "
                           "output's norm is unknown at inference: use tied_weights=False and a "
                           "normalization other than 'unit_norm'")
        self.k = k
        self.architecture = architecture
        self.transcode, self.skip = bool(transcode), bool(skip)
        self.tied_weights = bool(tied_weights)
        self.normalization = resolve_normalization(normalization)

        decoder = unit_rows(mx.random.normal((d_hidden, d_model), key=mx.random.key(seed)))
        self.W_enc = decoder
        self.b_enc = mx.zeros((d_hidden,))
        if not self.tied_weights:
            self["W_dec"] = mx.array(decoder)
        self.b_dec = mx.zeros((d_model,))
        self.threshold = mx.zeros((d_hidden,)) if architecture == "jumprelu" else mx.array(0.0)
        self.norm_stats = norm.identity_stats(self.normalization, d_model)
        frozen = ["norm_stats"] if architecture == "jumprelu" else ["threshold", "norm_stats"]
        if self.transcode:
            self.target_norm_stats = norm.identity_stats(self.normalization, d_model)
            frozen.append("target_norm_stats")
        if self.skip:
            self.W_skip = mx.zeros((d_model, d_model))  # sparsify's init: the skip term starts off
        self.freeze(keys=frozen, recurse=False)
        object.__setattr__(self, "_metadata", {})
        self._sync_metadata()

    # -- construction --------------------------------------------------------------------
    @classmethod
    def from_config(cls, d_model: int, config: SAEConfig, transcode: bool = False, skip: bool = False) -> "SAE":
        """An untrained SAE (a transcoder with `transcode`) of the shape and kind `config` asks for,
        inputs of width `d_model`."""
        sae = cls(
            d_model,
            config.d_hidden(d_model),
            k=config.k,
            architecture=config.architecture,
            tied_weights=config.tied_weights,
            normalization=config.normalization,
            seed=config.seed,
            transcode=transcode,
            skip=skip,
        )
        sae.metadata.update(config.contexts.to_dict())
        return sae

    def fit_normalization(self, sample: mx.array) -> None:
        """Estimate the normalization statistics from `sample` (..., data_width) raw training rows."""
        inputs, target = self.split_rows(sample)
        self.norm_stats = norm.fit_normalizer(self.normalization, inputs)
        if self.transcode:
            self.target_norm_stats = norm.fit_normalizer(self.normalization, target)
        self._sync_metadata()

    def init_b_dec(self, sample: mx.array, method: str = "geometric_median") -> None:
        """Set b_dec from `sample` (..., data_width) raw training rows (a transcoder: from its
        targets): "geometric_median", "mean" or "zeros"."""
        if method not in B_DEC_INITS:
            raise SAEError(f"b_dec_init={method!r} is not supported: use one of {B_DEC_INITS}")
        x = self._normalized_target(*self.split_rows(sample))
        if method == "geometric_median":
            self.b_dec = geometric_median(x)
        elif method == "mean":
            self.b_dec = mx.mean(x, axis=0)
        else:
            self.b_dec = mx.zeros((self.d_model,))

    def initialize_geometric_median(self, sample: mx.array) -> None:
        """Centre the SAE on `sample` (..., d_model): b_dec = its geometric median (normalized space)."""
        self.init_b_dec(sample, "geometric_median")

    # -- shape and metadata --------------------------------------------------------------
    @property
    def d_model(self) -> int:
        return int(self.b_dec.shape[0])

    @property
    def d_hidden(self) -> int:
        return int(self.b_enc.shape[0])

    @property
    def data_width(self) -> int:
        """Width of a training row: d_model, or 2 * d_model for a transcoder ([input | target])."""
        return self.d_model * (2 if self.transcode else 1)

    def split_rows(self, rows: mx.array) -> tuple[mx.array, mx.array]:
        """(inputs, targets), each (n, d_model) float32, of training rows (..., data_width)."""
        if rows.shape[-1] != self.data_width:
            what = "[input | target] rows of width 2 * d_model" if self.transcode else "activations of width d_model"
            raise SAEError(f"got width {rows.shape[-1]}, but this {'transcoder' if self.transcode else 'SAE'} "
                           f"trains on {what} = {self.data_width}: pass the hook points it was built for")
        flat = mx.array(rows).reshape(-1, self.data_width).astype(mx.float32)
        return (flat[:, : self.d_model], flat[:, self.d_model :]) if self.transcode else (flat, flat)

    @property
    def output_hook_point(self) -> HookPoint | None:
        """Where the reconstruction belongs: a transcoder's metadata "output_hook_point", else `hook_point`."""
        out = self._metadata.get("output_hook_point")
        return HookPoint.from_dict(out) if self.transcode and isinstance(out, dict) else self.hook_point

    @property
    def W_dec(self) -> mx.array:
        """(d_hidden, d_model) decoder; row i is feature i's direction (unit norm in an SAE; W_enc when tied)."""
        return self["W_enc"] if self.tied_weights else self["W_dec"]

    @property
    def metadata(self) -> dict[str, Any]:
        """Provenance dict (layer, component, model_name, d_model, d_hidden, k, architecture,
        normalization summary, training stats, ...); edit it in place or assign a new dict."""
        return self._metadata

    def __setattr__(self, key: str, value: Any) -> None:
        # nn.Module would file a dict under its parameters; metadata is plain provenance.
        if key != "metadata":
            return super().__setattr__(key, value)
        if not isinstance(value, dict):
            raise SAEError(f"metadata must be a dict, got {type(value).__name__}")
        object.__setattr__(self, "_metadata", dict(value))
        self._sync_metadata()

    @property
    def hook_point(self) -> HookPoint | None:
        """Where this SAE reads its activations (metadata "hook_point"), or None if unknown.

        Set it with `sae.hook_point = model.hook_point(layer, component)`; SAE files from before
        hook points were stored give one from their "layer" and "component" (path unresolved, "").
        """
        meta = self._metadata
        if isinstance(meta.get("hook_point"), dict):
            return HookPoint.from_dict(meta["hook_point"])
        if meta.get("layer") is None or meta.get("component") is None:
            return None
        return HookPoint(int(meta["layer"]), str(meta["component"]), "")

    @hook_point.setter
    def hook_point(self, point: HookPoint) -> None:
        if not isinstance(point, HookPoint):
            raise SAEError(f"hook_point must be a HookPoint (model.hook_point(layer, component)), got {point!r}")
        self._metadata["hook_point"] = point.to_dict()
        self._sync_metadata()

    def _sync_metadata(self) -> None:
        for key in ("model_name", "layer", "component"):
            self._metadata.setdefault(key, None)
        if isinstance(self._metadata.get("hook_point"), dict):  # "layer"/"component" mirror it for display
            self._metadata.update(layer=self._metadata["hook_point"]["layer"],
                                  component=self._metadata["hook_point"]["component"])
        self._metadata.update(
            d_model=self.d_model,
            d_hidden=self.d_hidden,
            k=self.k,
            architecture=self.architecture,
            tied_weights=self.tied_weights,
            normalization=norm.summarize(self.normalization, self.norm_stats),
        )
        if self.transcode:
            self._metadata.update(transcode=True, skip=self.skip,
                                  target_normalization=norm.summarize(self.normalization, self.target_norm_stats))

    def is_compatible(self, model: Any, layer: int | None = None, component: str | None = None) -> bool:
        """True when this SAE was trained on `model` (and on `layer`/`component`, when given).

        Components compare by meaning ("attn" == "self_attn", "output" == "resid");
        `sae.checks.compatibility_problems` says what differs.
        """
        return not compatibility_problems(self, model, layer, component)

    # -- inference -----------------------------------------------------------------------
    def encode(self, x: mx.array) -> mx.array:
        """Raw activations (..., d_model) -> dense codes (..., d_hidden), mostly zeros.

        TopK keeps exactly k per token; BatchTopK keeps latents above its learned `threshold`
        (so a token's code never depends on the rest of the batch); JumpReLU keeps latent i where
        its pre-activation exceeds threshold[i]; ReLU keeps positives.
        """
        self._check_width(x)
        acts, idx = self._codes(self._centred(self._flat(x)))
        if idx is not None:
            acts = mx.put_along_axis(mx.zeros((acts.shape[0], self.d_hidden)), mx.stop_gradient(idx), acts, axis=-1)
        return self._check_finite(x, acts.reshape(*x.shape[:-1], self.d_hidden))

    def encode_sparse(self, x: mx.array) -> tuple[mx.array, mx.array]:
        """TopK only: raw activations (..., d_model) -> (acts, indices), each (..., k)."""
        if self.architecture != "topk":
            raise SAEError(f"encode_sparse needs a 'topk' SAE, this one is {self.architecture!r}: use encode")
        self._check_width(x)
        acts, idx = self._codes(self._centred(self._flat(x)))
        return self._check_finite(x, acts.reshape(*x.shape[:-1], self.k)), idx.reshape(*x.shape[:-1], self.k)

    def decode(self, codes: mx.array, token_norm: mx.array | None = None, x: mx.array | None = None) -> mx.array:
        """Dense codes (..., d_hidden) -> reconstruction (..., d_model) on the raw activation scale.

        Only "unit_norm" SAEs need `token_norm` (..., 1), the input's own norm (`self.token_norm(x)`).
        A skip transcoder adds its skip term of the raw input `x` (..., d_model) when given.
        """
        if codes.shape[-1] != self.d_hidden:
            raise SAEError(f"codes have {codes.shape[-1]} latents but this SAE has d_hidden={self.d_hidden}")
        y = codes.astype(mx.float32) @ self.W_dec + self.b_dec
        if self.skip and x is not None:
            self._check_width(x)
            y = y + self._skip_term(norm.normalize(self.normalization, self.norm_stats, x.astype(mx.float32))[0])
        return self._denormalize(y, token_norm)

    def token_norm(self, x: mx.array) -> mx.array | None:
        """(..., 1) per-token norm that "unit_norm" divides by; None for other schemes."""
        _, token_norm = norm.normalize(self.normalization, self.norm_stats, mx.array(x).astype(mx.float32))
        return token_norm

    def within_norm_limit(self, x: mx.array) -> mx.array:
        """(...,) bool: True where a token of raw activations `x` (..., d_model) is no larger than
        the tokens this SAE trained on (metadata "max_token_norm"; every token when unset).

        Larger tokens are attention sinks: splices leave them as they are and scans skip them.
        """
        return within_limit(x, self._metadata.get("max_token_norm"))

    def __call__(self, x: mx.array) -> mx.array:
        """Reconstruction (..., d_model) of raw activations `x` (..., d_model), in float32."""
        return self.reconstruct(x).reconstruction

    def reconstruct(self, x: mx.array) -> Reconstruction:
        """Inference pass over raw activations (..., d_model): reconstruction plus sparse codes."""
        self._check_width(x)
        x_n, token_norm = norm.normalize(self.normalization, self.norm_stats, self._flat(x))
        acts, idx = self._codes(x_n if self.transcode else x_n - self.b_dec)
        y = (acts @ self.W_dec if idx is None else sparse_decode(acts, idx, self.W_dec)) + self.b_dec
        y = self._denormalize(y + self._skip_term(x_n), token_norm)
        return Reconstruction(y.reshape(x.shape), acts, idx)

    def _codes(self, centred: mx.array) -> tuple[mx.array, mx.array | None]:
        """Inference codes of (n, d_model) centred inputs: (acts, indices) (n, k), or dense and None."""
        if self.architecture == "topk":
            return topk_encode(centred, self.W_enc, self.b_enc, self.k)
        acts = self._pre_acts(centred)
        if self.architecture in ("batchtopk", "jumprelu", "matryoshka_batchtopk"):
            acts = mx.where(acts > self.threshold, acts, 0.0)
        return acts, None

    def to_jumprelu(self) -> "SAE":
        """A JumpReLU copy of this (Matryoshka) BatchTopK SAE with identical codes (`jumprelu.to_jumprelu`)."""
        return to_jumprelu(self)

    # -- training ------------------------------------------------------------------------
    def forward(self, x: mx.array, dead_mask: mx.array | None = None, k_aux: int | None = None,
                bandwidth: float = DEFAULT_BANDWIDTH, prefixes: tuple[int, ...] | None = None) -> ForwardOutput:
        """Training pass over raw activations (..., d_model), flattened to n tokens.

        `dead_mask` (d_hidden,) bool marks dead latents; with it, the top `k_aux` of their
        pre-activations must reconstruct the residual (AuxK, Gao et al. 2024), scaled by
        min(n_dead / k_aux, 1). BatchTopK keeps the top n*k activations of the whole batch. JumpReLU's
        threshold gradients have kernel width `bandwidth`; `prefixes` (Matryoshka) are the levels' widths.
        """
        inputs, target = self.split_rows(x)
        x_n, _ = norm.normalize(self.normalization, self.norm_stats, inputs)
        centred = x_n if self.transcode else x_n - self.b_dec
        t_n = self._normalized_target(inputs, target) if self.transcode else x_n
        n = x_n.shape[0]
        if self.architecture == "topk":
            # b_dec goes in whole: its encoder gradient is then one gemv, not a gather of n*k rows.
            acts, idx = topk_encode(x_n, self.W_enc, self.b_enc, self.k, b_dec=None if self.transcode else self.b_dec)
            sae_out = sparse_decode(acts, idx, self.W_dec) + self.b_dec + self._skip_term(x_n)
            l0 = prefix_err = None
        else:
            acts, pre, l0 = dense_codes(centred @ self.W_enc.T + self.b_enc, self.architecture, self.k,
                                        self.threshold, bandwidth)
            base = self.b_dec + self._skip_term(x_n)
            dec, prefix_err = (nested_decode(acts, self.W_dec, t_n - base, prefixes) if prefixes
                               else (acts @ self.W_dec, None))
            sae_out, idx = dec + base, None
        residual = t_n - sae_out
        total_variance = mx.maximum(mx.sum(mx.square(t_n - mx.mean(t_n, axis=0))), 1e-12)
        sq_error = mx.sum(mx.square(residual))
        per_token_sum = mx.sum(acts, axis=-1)
        auxk_loss = mx.array(0.0)
        if dead_mask is not None and self.architecture != "relu":
            k_aux = min(k_aux or max(1, self.d_model // 2), self.d_hidden)
            e_hat = self._auxk_reconstruction(centred, dead_mask, k_aux, None if idx is not None else pre)
            scale = mx.minimum(mx.sum(dead_mask).astype(mx.float32) / k_aux, 1.0)
            auxk_loss = scale * mx.sum(mx.square(e_hat - mx.stop_gradient(residual))) / total_variance
        return ForwardOutput(
            sae_out=sae_out,
            top_acts=acts,
            top_indices=idx,
            l0=mx.mean(mx.sum(acts > 0, axis=-1).astype(mx.float32)) if l0 is None else l0,
            recon_loss=sq_error / residual.size,
            fvu=sq_error / total_variance,
            auxk_loss=auxk_loss,
            l1_loss=mx.mean(per_token_sum) / mx.sqrt(total_variance / n),
            prefix_fvu=None if prefix_err is None else prefix_err / total_variance,
        )

    def _auxk_reconstruction(self, centred: mx.array, dead_mask: mx.array, k_aux: int, pre: mx.array | None):
        # Dense on purpose: with k_aux ~ d_model / 2, a gather of k_aux decoder rows per token
        # costs more than one dense matmul, and this pass only runs while latents are dead.
        if pre is None:
            pre = self._pre_acts(centred)
        masked = mx.where(dead_mask, pre, 0.0)
        kth = mx.min(mx.topk(mx.stop_gradient(masked), k_aux, axis=-1), axis=-1, keepdims=True)
        return mx.where(masked >= kth, masked, 0.0) @ self.W_dec

    # -- persistence (mlxterp/sae/persist.py) --------------------------------------------
    def save(self, path: str | os.PathLike, format: str = "mlxterp") -> None:
        """Write this SAE (weights, normalization, metadata) to one safetensors file, atomically
        (any suffix; ".mlx" and ".safetensors" are usual; docs/sae.md "File format"); format="saelens"
        or "sparsify": a folder those libraries load, normalization folded in (docs/interop.md)."""
        save_sae(self, path, format)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SAE":
        """Read an SAE that `save` wrote; others raise SAEError (`load_sae` also checks the model)."""
        return load_sae_file(cls, path)

    @classmethod
    def from_parts(cls, spec: dict[str, Any], tensors: dict[str, Any], path: Path | str) -> "SAE":
        """Rebuild an SAE from `sae_spec` and `sae_tensors` output, checking every name and shape."""
        return sae_from_parts(cls, spec, tensors, path)

    # -- helpers -------------------------------------------------------------------------
    def _pre_acts(self, centred: mx.array) -> mx.array:
        return nn.relu(centred @ self.W_enc.T + self.b_enc)

    def _centred(self, flat: mx.array) -> mx.array:
        x_n, _ = norm.normalize(self.normalization, self.norm_stats, flat)
        return x_n if self.transcode else x_n - self.b_dec

    def _skip_term(self, x_n: mx.array) -> mx.array | float:
        return x_n @ self.W_skip.T if self.skip else 0.0

    def _normalized_target(self, inputs: mx.array, target: mx.array) -> mx.array:
        stats = self.target_norm_stats if self.transcode else self.norm_stats
        return norm.normalize(self.normalization, stats, target if self.transcode else inputs)[0]

    def _denormalize(self, y: mx.array, token_norm: mx.array | None) -> mx.array:
        stats = self.target_norm_stats if self.transcode else self.norm_stats
        return norm.denormalize(self.normalization, stats, y, token_norm)

    def _flat(self, x: mx.array) -> mx.array:
        return mx.array(x).reshape(-1, self.d_model).astype(mx.float32)

    def _check_finite(self, x: mx.array, codes: mx.array) -> mx.array:
        # Evaluated with the codes in one go: no host sync beyond the one callers make anyway.
        finite = mx.all(mx.isfinite(mx.array(x)))
        mx.eval(codes, finite)
        if not finite.item():
            raise SAEError("the activations passed to the SAE contain NaN or inf, so its codes would "
                           "be NaN: check the activations (a float16 overflow? a broken hook?)")
        return codes

    def _check_width(self, x: Any) -> None:
        if x.shape[-1] != self.d_model:
            raise SAEError(
                f"activations have width {x.shape[-1]} but this SAE has d_model={self.d_model}: "
                "use the SAE trained on this layer/component and model"
            )

