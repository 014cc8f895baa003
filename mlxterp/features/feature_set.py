"""FeatureSet: an SAE's feature directions, per-feature statistics and labels in one safetensors file."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

import mlx.core as mx
import numpy as np

from ..errors import SAEError
from ..sae.io import read_tensors, write_tensors
from ..sae.metrics import FeatureStats

FEATURE_SET_FORMAT = "mlxterp.feature_set"
FEATURE_SET_VERSION = 1
STAT_NAMES = ("frequency", "mean_activation", "max_activation")


@dataclass
class SAEFeature:
    """One feature: its decoder direction (d_model,), encoder row (d_model,) or None, stats, label.

    Directions are the SAE's parameters, in its normalized input space (for the default
    "expected_norm" scheme that is the raw direction up to scale).
    """

    index: int
    decoder: mx.array
    encoder: mx.array | None = None
    stats: dict[str, float] = field(default_factory=dict)
    label: str | None = None


class FeatureSet:
    """Features of one SAE: decoder (n, d_model), optional encoder (n, d_model), per-feature
    stats {name: (n,) float32}, labels (n,) str or None, and the SAE's metadata.

    >>> fs = FeatureSet.from_sae(sae, trainer.get_stats())
    >>> fs.save("layer6_features.safetensors"); fs = FeatureSet.load("layer6_features.safetensors")
    >>> fs[12].decoder, fs[12].stats["frequency"], len(fs)
    """

    def __init__(
        self,
        decoder: Any,
        encoder: Any = None,
        stats: Mapping[str, Any] | None = None,
        labels: list[str | None] | None = None,
        metadata: dict[str, Any] | None = None,
    ):
        self.decoder = mx.array(decoder).astype(mx.float32)
        if self.decoder.ndim != 2:
            raise SAEError(f"decoder must be (n_features, d_model), got shape {tuple(self.decoder.shape)}")
        n = self.decoder.shape[0]
        self.encoder = None if encoder is None else mx.array(encoder).astype(mx.float32)
        if self.encoder is not None and self.encoder.shape != self.decoder.shape:
            raise SAEError(f"encoder shape {tuple(self.encoder.shape)} differs from decoder shape "
                           f"{tuple(self.decoder.shape)}: pass rows of W_enc (n_features, d_model)")
        self.stats = {name: _per_feature(name, value, n) for name, value in (stats or {}).items()}
        self.labels = list(labels) if labels is not None else [None] * n
        if len(self.labels) != n or not all(l is None or isinstance(l, str) for l in self.labels):
            raise SAEError(f"labels must be a list of {n} strings or None")
        self.metadata = dict(metadata or {})

    @classmethod
    def from_sae(cls, sae: Any, stats: FeatureStats | None = None,
                 labels: list[str | None] | None = None) -> "FeatureSet":
        """The features of `sae`, with per-feature `stats` (a FeatureStats: `SAETrainer.get_stats()`,
        `feature_stats(...)`, or `evaluate_reconstruction(..., per_feature=True)["per_feature"]`).

        Statistics covering only some features leave the others' NaN.
        """
        n = sae.d_hidden
        per_feature: dict[str, np.ndarray] = {}
        metadata = dict(sae.metadata)
        if stats is not None:
            if not isinstance(stats, FeatureStats):
                raise SAEError(f"stats must be a FeatureStats (e.g. trainer.get_stats()), got {type(stats).__name__}")
            for name in STAT_NAMES:
                full = np.full(n, np.nan, dtype=np.float32)
                full[stats.indices] = np.asarray(getattr(stats, name), dtype=np.float32)
                per_feature[name] = full
            metadata["stats_n_tokens"] = int(stats.n_tokens)
        return cls(sae.W_dec, sae.W_enc, per_feature, labels, metadata)

    def __len__(self) -> int:
        return self.decoder.shape[0]

    def __getitem__(self, index: int) -> SAEFeature:
        n = len(self)
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not -n <= index < n:
            raise IndexError(f"feature index {index!r} out of range for {n} features")
        i = int(index) % n
        return SAEFeature(
            index=i,
            decoder=self.decoder[i],
            encoder=None if self.encoder is None else self.encoder[i],
            stats={name: float(values[i]) for name, values in self.stats.items()},
            label=self.labels[i],
        )

    def __iter__(self) -> Iterator[SAEFeature]:
        return (self[i] for i in range(len(self)))

    def save(self, path: str | os.PathLike) -> None:
        """Write the set to one safetensors file (metadata and labels as JSON in its header), atomically."""
        tensors = {"decoder": self.decoder}
        if self.encoder is not None:
            tensors["encoder"] = self.encoder
        tensors.update({f"stats.{name}": values for name, values in self.stats.items()})
        header = {"labels": self.labels, "metadata": _json_safe(self.metadata)}
        write_tensors(path, tensors, header, FEATURE_SET_FORMAT, FEATURE_SET_VERSION)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "FeatureSet":
        """Read a set that `save` wrote; other files raise SAEError."""
        tensors, header = read_tensors(path, FEATURE_SET_FORMAT, FEATURE_SET_VERSION, "feature set")
        if "decoder" not in tensors:
            raise SAEError(f"{path} holds no 'decoder' tensor: the file is damaged; save the feature set again")
        stats = {name[len("stats."):]: value for name, value in tensors.items() if name.startswith("stats.")}
        try:
            return cls(tensors["decoder"], tensors.get("encoder"), stats, header.get("labels"),
                       header.get("metadata"))
        except SAEError as exc:
            raise SAEError(f"{path} is inconsistent ({exc}): save the feature set again") from None


def _per_feature(name: str, value: Any, n: int) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float32)
    if arr.shape != (n,):
        raise SAEError(f"stat {name!r} has shape {arr.shape}, expected one value per feature ({n},)")
    return arr


def _json_safe(value: Any) -> Any:
    """`value` with numpy/mx scalars and arrays turned into Python numbers and lists."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.ndarray, mx.array)):
        return np.asarray(value).tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value
