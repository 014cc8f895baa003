"""Array-level SAE evaluation, streamed over batches of raw activations (no language model)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable

import mlx.core as mx
import numpy as np

from ..errors import SAEError
from .ops import latent_totals

if TYPE_CHECKING:
    from .config import SAEConfig
    from .model import SAE

DENSE_FREQUENCY = 0.1

# The metric vocabulary: what the trainer logs (history, tqdm, W&B "train/<name>"), plots draw
# and docs/sae.md describes. Validation logs "val/<name>" with the names of evaluate_reconstruction.
TRAINING_METRICS = {
    "loss": "training loss",
    "fvu": "fraction of variance unexplained",
    "recon_loss": "reconstruction MSE (normalized space)",
    "auxk_loss": "AuxK loss (dead latents)",
    "l1_loss": "L1 of the codes (scale-free)",
    "l0_loss": "L0 penalty (JumpReLU): (l0 / k - 1)^2",
    "prefix_fvu": "mean FVU of the nested prefixes (Matryoshka)",
    "l0": "active features per token",
    "dead_fraction": "dead-feature fraction",
    "grad_norm": "gradient norm (before clipping)",
    "learning_rate": "learning rate",
}


@dataclass
class FeatureStats:
    """Per-feature statistics over `n_tokens` tokens; arrays are (n_features,).

    The one statistics type: `SAETrainer.get_stats()` (the last epoch's training tokens),
    `evaluate_reconstruction(..., per_feature=True)` and `feature_stats` (a scan of a dataset)
    all return it. `indices` are the SAE feature indices the rows describe. `counts` is how
    many tokens a feature fired on, `frequency` that fraction of the tokens, `mean_activation`
    its mean where active (0 if never), `max_activation` its largest activation. Scans also fill
    `hist_counts` (n_features, n_bins), counts of its nonzero activations in equal bins over
    [0, hist_top]; elsewhere they are None.
    """

    indices: np.ndarray
    n_tokens: int
    counts: np.ndarray
    frequency: np.ndarray
    mean_activation: np.ndarray
    max_activation: np.ndarray
    hist_counts: np.ndarray | None = None
    hist_top: np.ndarray | None = None

    @classmethod
    def from_totals(cls, fired, act_sum, act_max, n_tokens: int, indices=None) -> "FeatureStats":
        """Statistics from per-feature totals (firing counts, activation sums and maxima)."""
        counts = np.asarray(fired, dtype=np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(counts > 0, np.asarray(act_sum, dtype=np.float64) / np.maximum(counts, 1), 0.0)
        return cls(
            indices=np.arange(len(counts)) if indices is None else np.asarray(indices, dtype=np.int64),
            n_tokens=int(n_tokens),
            counts=counts.astype(np.int64),
            frequency=counts / max(int(n_tokens), 1),
            mean_activation=mean.astype(np.float32),
            max_activation=np.asarray(act_max, dtype=np.float32),
        )

    @property
    def dead(self) -> np.ndarray:
        """SAE indices of the features that never fired."""
        return self.indices[self.counts == 0]

    def row(self, feature: int) -> int:
        """The row of SAE feature `feature` in these arrays."""
        hits = np.flatnonzero(self.indices == feature)
        if hits.size == 0:
            raise KeyError(f"feature {feature} is not among the {len(self.indices)} features with statistics")
        return int(hits[0])

    def histogram(self, feature: int) -> tuple[np.ndarray, np.ndarray]:
        """(edges (n+1,), counts (n,)) of the feature's nonzero activations, empty top bins cut."""
        if self.hist_counts is None:
            raise KeyError("these statistics have no histograms: compute them with feature_stats(...)")
        row = self.row(feature)
        counts = self.hist_counts[row]
        used = np.flatnonzero(counts)
        if used.size == 0:
            return np.zeros(0, dtype=np.float64), np.zeros(0, dtype=np.int64)
        n = used[-1] + 1
        edges = np.linspace(0.0, float(self.hist_top[row]), len(counts) + 1)[: n + 1]
        return edges, counts[:n].copy()

    def density_histogram(self, n_bins: int = 40) -> tuple[np.ndarray, np.ndarray]:
        """(edges, counts) of log10 firing frequency over the features that fired at least once."""
        alive = self.frequency[self.counts > 0]
        if alive.size == 0:
            return np.zeros(0), np.zeros(0, dtype=np.int64)
        counts, edges = np.histogram(np.log10(alive), bins=n_bins)
        return edges, counts

    def summary(self) -> str:
        alive = self.counts > 0
        lines = [
            f"{len(self.indices)} features over {self.n_tokens} tokens: "
            f"{int((~alive).sum())} dead ({100 * (~alive).mean():.1f}%)",
        ]
        if alive.any():
            freq = self.frequency[alive]
            lines.append(
                f"firing frequency of live features: median {np.median(freq):.2e}, "
                f"min {freq.min():.2e}, max {freq.max():.2e}"
            )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def evaluate_reconstruction(
    sae: "SAE", activation_batches: Iterable[Any], per_feature: bool = False
) -> dict[str, Any]:
    """Reconstruction quality and sparsity of `sae` over batches of raw activations (..., d_model)
    (a transcoder: rows [input | target] (..., 2 * d_model); its target's reconstruction counts).

    Returns floats: mse (raw scale, per element), fvu (squared error / total variance around the
    mean of all evaluated tokens), explained_variance (1 - fvu), l0 (mean active latents per
    token), dead_fraction (latents that never fired on these tokens), dense_fraction (latents
    firing on more than 10% of tokens), cosine (mean cosine of reconstruction and input), and
    n_tokens. With `per_feature`, also "per_feature": a FeatureStats of every latent over these
    tokens. Batches are processed one at a time; codes of all tokens are never held at once.
    """
    h = sae.d_hidden
    n = 0
    mean = np.zeros(sae.d_model)
    m2 = sq_error = l0_sum = cos_sum = 0.0
    fired = mx.zeros((h,))
    act_sum = mx.zeros((h,))
    act_max = mx.zeros((h,))
    for batch in activation_batches:
        if batch.shape[-1] != sae.data_width:
            raise SAEError(f"activations have width {batch.shape[-1]} but the SAE has d_model={sae.d_model}"
                           + (" (a transcoder: rows [input | target] of width 2 * d_model)" if sae.transcode else ""))
        inputs, x = sae.split_rows(batch)  # x: what is reconstructed (a transcoder's target)
        if x.shape[0] == 0:
            continue
        recon, acts, idx = sae.reconstruct(inputs)
        counts, sums, maxes = latent_totals(acts, idx, h)
        fired, act_sum, act_max = fired + counts, act_sum + sums, mx.maximum(act_max, maxes)
        batch_mean = mx.mean(x, axis=0)
        cos = mx.sum(x * recon, axis=-1) / mx.maximum(
            mx.linalg.norm(x, axis=-1) * mx.linalg.norm(recon, axis=-1), 1e-12)
        stats = mx.stack([mx.sum(mx.square(x - recon)), mx.sum(mx.square(x - batch_mean)),
                          mx.sum(counts), mx.sum(cos)])
        mx.eval(stats, batch_mean, fired, act_sum, act_max)
        b_sq, b_m2, b_l0, b_cos = (float(v) for v in np.array(stats, dtype=np.float64))
        if not math.isfinite(b_sq + b_m2):
            raise SAEError("NaN/inf in the activations or the reconstruction: check the activations "
                           "(and the SAE's weights) for NaN/inf")
        # Chan et al.'s pairwise merge keeps the total variance exact without a second pass.
        b_n = x.shape[0]
        b_mean = np.array(batch_mean, dtype=np.float64)
        delta = b_mean - mean
        total = n + b_n
        m2 += b_m2 + float(delta @ delta) * n * b_n / total
        mean += delta * b_n / total
        n = total
        sq_error += b_sq
        l0_sum += b_l0
        cos_sum += b_cos
    if n == 0:
        raise SAEError("no activations to evaluate: the batches were empty")
    freq = np.array(fired, dtype=np.float64) / n
    if m2 == 0:
        raise SAEError(f"the {n} evaluated activations are all the same vector, so FVU (error over "
                       "variance) is undefined: evaluate on varied tokens")
    fvu = sq_error / m2
    out: dict[str, Any] = {
        "mse": sq_error / (n * sae.d_model),
        "fvu": fvu,
        "explained_variance": 1.0 - fvu,
        "l0": l0_sum / n,
        "dead_fraction": float(np.mean(freq == 0)),
        "dense_fraction": float(np.mean(freq > DENSE_FREQUENCY)),
        "cosine": cos_sum / n,
        "n_tokens": n,
    }
    if per_feature:
        out["per_feature"] = FeatureStats.from_totals(np.array(fired), np.array(act_sum), np.array(act_max), n)
    return out


def start_wandb(sae: "SAE", config: "SAEConfig", learning_rate: float, n_tokens: int | None,
                group: str | None = None):
    """A W&B run for training `sae` with `config` (its metrics are logged under TRAINING_METRICS' names)."""
    try:
        import wandb
    except ImportError:
        raise SAEError("use_wandb=True needs the wandb package: pip install 'mlxterp[wandb]' "
                       "(or pip install wandb), or set use_wandb=False") from None
    meta = sae.metadata
    return wandb.init(
        project=config.wandb_project or "mlxterp-sae",
        name=config.wandb_name,
        group=group,
        tags=list(config.wandb_tags) or None,
        config={**config.to_dict(), "d_model": sae.d_model, "d_hidden": sae.d_hidden,
                "layer": meta.get("layer"), "component": meta.get("component"),
                "model_name": meta.get("model_name"), "tokens_per_epoch": n_tokens,
                "learning_rate_resolved": learning_rate},
    )
