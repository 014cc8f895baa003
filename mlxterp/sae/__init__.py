"""Sparse autoencoders: config, model, trainer and evaluation on activation arrays (no LM needed)."""

from .config import SAEConfig
from .metrics import evaluate_reconstruction
from .model import SAE, ForwardOutput, geometric_median
from .normalize import fit_normalizer
from .train import SAETrainer, train_sae_on_activations

__all__ = [
    "SAE",
    "ForwardOutput",
    "SAEConfig",
    "SAETrainer",
    "evaluate_reconstruction",
    "fit_normalizer",
    "geometric_median",
    "train_sae_on_activations",
]
