"""Sparse autoencoders on activation arrays: config, model, training, metrics, files (no LM needed)."""

from .checks import check_compatible, compatibility_problems
from .config import SAEConfig
from .metrics import TRAINING_METRICS, FeatureStats, evaluate_reconstruction
from .load import load_sae
from .model import SAE, ForwardOutput
from .normalize import fit_normalizer
from .ops import geometric_median
from .train import SAETrainer, train_sae_on_activations

__all__ = [
    "SAE",
    "TRAINING_METRICS",
    "FeatureStats",
    "ForwardOutput",
    "SAEConfig",
    "SAETrainer",
    "check_compatible",
    "compatibility_problems",
    "evaluate_reconstruction",
    "fit_normalizer",
    "geometric_median",
    "load_sae",
    "train_sae_on_activations",
]
