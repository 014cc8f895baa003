"""SAEConfig: every setting of an SAE and its training run, validated on construction."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from ..activations.contexts import ContextSettings
from ..errors import DataError, SAEError

ARCHITECTURES = ("topk", "batchtopk", "relu", "jumprelu", "matryoshka_batchtopk")
INFERENCE_ARCHITECTURES = ARCHITECTURES
# JumpReLU's pseudo-derivative kernel width, in the normalized input space (pre-activations ~ 1).
DEFAULT_BANDWIDTH = 0.2
NORMALIZATION_SCHEMES = ("none", "expected_norm", "standardize", "unit_norm")
OPTIMIZERS = ("adam", "signum")
LR_SCHEDULES = ("cosine", "constant", "schedule_free")
# Peak LR at 2**14 latents when learning_rate is None, scaled by 1/sqrt(d_hidden / 2**14) as in
# sparsify's rules; Adam's is 11x sparsify's 2e-4 (3e-3 at 9,216 latents): see docs/sae.md.
LR_AT_16K_LATENTS = {"adam": 2.25e-3, "signum": 5e-3}
B_DEC_INITS = ("geometric_median", "mean", "zeros")
MAX_DEAD_TOKENS_THRESHOLD = 1 << 30


def resolve_normalization(normalize_input: bool | str) -> str:
    """The scheme name `normalize_input` stands for: True -> "expected_norm", False -> "none"."""
    if normalize_input is True:
        return "expected_norm"
    if normalize_input is False:
        return "none"
    if isinstance(normalize_input, str) and normalize_input in NORMALIZATION_SCHEMES:
        return normalize_input
    raise SAEError(
        f"normalize_input={normalize_input!r} is not a normalization: use True (= 'expected_norm'), "
        f"False (= 'none') or one of {', '.join(repr(s) for s in NORMALIZATION_SCHEMES)}"
    )


@dataclass(frozen=True)
class SAEConfig:
    """Settings of an SAE (shape, sparsity) and of its training run (optimizer, schedule, data).

    `batch_size` counts tokens (activation vectors), not texts. docs/sae.md explains every default.
    """

    # Shape and sparsity
    expansion_factor: int = 16
    k: int = 32
    architecture: str = "topk"
    tied_weights: bool = False
    normalize_input: bool | str = True
    b_dec_init: str = "geometric_median"
    # Loss
    l1_coefficient: float = 0.1
    l0_coefficient: float = 1.0
    jumprelu_bandwidth: float = DEFAULT_BANDWIDTH
    matryoshka_prefixes: tuple[int, ...] = field(default_factory=tuple)
    auxk_coefficient: float = 1 / 32
    k_aux: int | None = None
    dead_tokens_threshold: int = 1_000_000
    resample_dead_every: int | None = None
    # Optimization
    optimizer: str = "adam"
    learning_rate: float | None = None
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    gradient_clip: float | None = 1.0
    num_epochs: int = 1
    batch_size: int = 4096
    validation_split: float = 0.05
    seed: int = 0
    # Data (`contexts`: recorded in the SAE's metadata; the activation store applies them)
    context_length: int = 256
    drop_first_tokens: int = 1
    drop_special_tokens: bool = True
    max_norm_ratio: float | None = 10.0
    # Bookkeeping
    log_every: int = 25
    checkpoint_every: int | None = 1000
    use_wandb: bool = False
    wandb_project: str | None = None
    wandb_name: str | None = None
    wandb_tags: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        _positive_int(self, "expansion_factor")
        _positive_int(self, "k")
        _choice(self, "architecture", ARCHITECTURES)
        _bool(self, "tied_weights")
        resolve_normalization(self.normalize_input)
        _choice(self, "b_dec_init", B_DEC_INITS)
        _non_negative_float(self, "l1_coefficient")
        _positive_float(self, "l0_coefficient")
        _positive_float(self, "jumprelu_bandwidth")
        _prefixes(self)
        _non_negative_float(self, "auxk_coefficient")
        _positive_int(self, "k_aux", optional=True)
        _positive_int(self, "dead_tokens_threshold")
        if self.dead_tokens_threshold > MAX_DEAD_TOKENS_THRESHOLD:
            raise SAEError(f"dead_tokens_threshold must be at most {MAX_DEAD_TOKENS_THRESHOLD}, "
                           f"got {self.dead_tokens_threshold}")
        _positive_int(self, "resample_dead_every", optional=True)
        _choice(self, "optimizer", OPTIMIZERS)
        if self.learning_rate is not None:
            _positive_float(self, "learning_rate")
        _choice(self, "lr_schedule", LR_SCHEDULES)
        _non_negative_int(self, "warmup_steps")
        _non_negative_float(self, "min_lr_ratio")
        if self.min_lr_ratio > 1:
            raise SAEError(f"min_lr_ratio is the LR floor as a fraction of the peak: use a value in "
                           f"[0, 1], got {self.min_lr_ratio}")
        if self.gradient_clip is not None:
            _positive_float(self, "gradient_clip")
        _positive_int(self, "num_epochs")
        _positive_int(self, "batch_size")
        _non_negative_float(self, "validation_split")
        if self.validation_split >= 1:
            raise SAEError(f"validation_split is a fraction of the data: use a value in [0, 1), "
                           f"got {self.validation_split}")
        _int(self, "seed")
        try:
            self.contexts
        except DataError as exc:
            raise SAEError(str(exc)) from None
        if self.max_norm_ratio is not None:
            _positive_float(self, "max_norm_ratio")
            if self.max_norm_ratio <= 1:
                raise SAEError(f"max_norm_ratio drops tokens whose norm exceeds that many times the "
                               f"median: use a value above 1 (default 10) or None, got {self.max_norm_ratio}")
        _positive_int(self, "log_every")
        _positive_int(self, "checkpoint_every", optional=True)
        _bool(self, "use_wandb")
        for name in ("wandb_project", "wandb_name"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise SAEError(f"{name} must be a string or None, got {getattr(self, name)!r}")
        tags = self.wandb_tags
        if isinstance(tags, str) or not all(isinstance(t, str) for t in tags):
            raise SAEError(f"wandb_tags must be a list of strings, e.g. ['sae', 'layer10'], got {tags!r}")
        object.__setattr__(self, "wandb_tags", tuple(tags))

    @property
    def contexts(self) -> ContextSettings:
        """How texts become training contexts (context_length, drop_first_tokens, drop_special_tokens)."""
        return ContextSettings(self.context_length, self.drop_first_tokens, self.drop_special_tokens)

    @property
    def normalization(self) -> str:
        """The input normalization scheme `normalize_input` stands for."""
        return resolve_normalization(self.normalize_input)

    def d_hidden(self, d_model: int) -> int:
        """Number of latents for inputs of width `d_model`."""
        return d_model * self.expansion_factor

    def resolved_learning_rate(self, d_hidden: int) -> float:
        """`learning_rate`, or when None the optimizer's rule: 2.25e-3 (Adam) or 5e-3 (signum,
        sparsify's) times 1 / sqrt(d_hidden / 2**14)."""
        if self.learning_rate is not None:
            return self.learning_rate
        return LR_AT_16K_LATENTS[self.optimizer] / math.sqrt(d_hidden / 2**14)

    def resolved_k_aux(self, d_model: int) -> int:
        """`k_aux`, or when None d_model // 2 (Gao et al.), at most the number of latents."""
        k_aux = self.k_aux if self.k_aux is not None else max(1, d_model // 2)
        return min(k_aux, self.d_hidden(d_model))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict of every field."""
        out = dataclasses.asdict(self)
        out["wandb_tags"] = list(self.wandb_tags)
        out["matryoshka_prefixes"] = list(self.matryoshka_prefixes)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SAEConfig":
        """The config `to_dict` wrote; unknown keys are refused with their names."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise SAEError(f"unknown SAEConfig fields {unknown}: valid fields are {sorted(names)}")
        return cls(**data)


def _int(cfg: SAEConfig, name: str) -> None:
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise SAEError(f"{name} must be an integer, got {value!r}")


def _positive_int(cfg: SAEConfig, name: str, optional: bool = False) -> None:
    value = getattr(cfg, name)
    if optional and value is None:
        return
    _int(cfg, name)
    if value < 1:
        hint = " (or None to turn it off)" if optional else ""
        raise SAEError(f"{name} must be a positive integer{hint}, got {value}")


def _non_negative_int(cfg: SAEConfig, name: str) -> None:
    _int(cfg, name)
    if getattr(cfg, name) < 0:
        raise SAEError(f"{name} must be >= 0, got {getattr(cfg, name)}")


def _float(cfg: SAEConfig, name: str) -> float:
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SAEError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _positive_float(cfg: SAEConfig, name: str) -> None:
    if _float(cfg, name) <= 0:
        raise SAEError(f"{name} must be > 0, got {getattr(cfg, name)}")


def _non_negative_float(cfg: SAEConfig, name: str) -> None:
    if _float(cfg, name) < 0:
        raise SAEError(f"{name} must be >= 0, got {getattr(cfg, name)}")


def _bool(cfg: SAEConfig, name: str) -> None:
    if not isinstance(getattr(cfg, name), bool):
        raise SAEError(f"{name} must be True or False, got {getattr(cfg, name)!r}")


def _prefixes(cfg: SAEConfig) -> None:
    # The bound by d_hidden is checked where d_model is known (sae.matryoshka.resolve_prefixes).
    prefixes = cfg.matryoshka_prefixes
    example = "e.g. (576, 2304) for 9216 latents; the whole dictionary is always the last level"
    if isinstance(prefixes, (str, int)) or not all(isinstance(p, int) and not isinstance(p, bool)
                                                   for p in prefixes):
        raise SAEError(f"matryoshka_prefixes must be a list of latent counts, {example}; got {prefixes!r}")
    prefixes = tuple(prefixes)
    if prefixes and cfg.architecture != "matryoshka_batchtopk":
        raise SAEError(f"matryoshka_prefixes={list(prefixes)} only applies to architecture="
                       f"'matryoshka_batchtopk' (this config trains {cfg.architecture!r}): drop it or "
                       "change the architecture")
    if any(p < 1 for p in prefixes) or any(b <= a for a, b in zip(prefixes, prefixes[1:])):
        raise SAEError(f"matryoshka_prefixes must be positive and strictly increasing (each level a "
                       f"larger prefix of the dictionary), {example}; got {list(prefixes)}")
    object.__setattr__(cfg, "matryoshka_prefixes", prefixes)


def _choice(cfg: SAEConfig, name: str, choices: tuple[str, ...]) -> None:
    if getattr(cfg, name) not in choices:
        raise SAEError(f"{name}={getattr(cfg, name)!r} is not supported: use one of "
                       f"{', '.join(repr(c) for c in choices)}")
