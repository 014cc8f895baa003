"""mlxterp: interpretability for MLX language models (tracing, SAEs, features, steering)."""

from .platform import configure_blas

configure_blas()

from .features import (  # noqa: E402
    FeatureSet,
    SAEFeature,
    ablate,
    analyze_text,
    clamp,
    compare_generations,
    feature_stats,
    get_top_activating_texts,
    launch_dashboard,
    logit_lens,
    scale,
    set_value,
    splice_sae,
    steer,
    top_activating_examples,
)
from .model import InterpretableModel  # noqa: E402
from .patching import PatchingResult, activation_patching  # noqa: E402
from .sae import SAE, SAEConfig, SAETrainer, train_sae_on_activations  # noqa: E402
from .sae.evaluate import evaluate_sae  # noqa: E402
from .sae.io import load_sae  # noqa: E402

__version__ = "0.1.0"
__all__ = [
    "FeatureSet",
    "InterpretableModel",
    "PatchingResult",
    "SAE",
    "SAEConfig",
    "SAEFeature",
    "SAETrainer",
    "ablate",
    "activation_patching",
    "analyze_text",
    "clamp",
    "compare_generations",
    "evaluate_sae",
    "feature_stats",
    "get_top_activating_texts",
    "launch_dashboard",
    "load_sae",
    "logit_lens",
    "scale",
    "set_value",
    "splice_sae",
    "steer",
    "top_activating_examples",
    "train_sae_on_activations",
    "__version__",
]
