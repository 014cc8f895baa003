"""mlxterp: interpretability for MLX language models (tracing, SAEs, features, steering).

Importing it has no side effects; the `mlxterp` command, the scripts and examples call
`mlxterp.platform.use_fast_blas()` themselves.
"""

from .activations import ContextSettings
from .features import (
    FeatureSet,
    SAEFeature,
    ablate,
    analyze_text,
    clamp,
    compare_generations,
    evaluate_sae,
    feature_stats,
    get_top_activating_texts,
    logit_lens,
    scale,
    set_value,
    splice_sae,
    steer,
    top_activating_examples,
)
from .hookpoint import HookPoint
from .model import InterpretableModel
from .patching import PatchingResult, activation_patching
from .sae import SAE, FeatureStats, SAEConfig, SAETrainer, load_sae, train_sae_on_activations
from .viz import export_neuronpedia, launch_dashboard, visualize_feature

__version__ = "0.1.0"
__all__ = [
    "ContextSettings",
    "FeatureSet",
    "FeatureStats",
    "HookPoint",
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
    "export_neuronpedia",
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
    "visualize_feature",
    "__version__",
]
