"""Finding, naming and steering an SAE's features: top examples, statistics, logit lens, edits.

Every function takes the SAE first and the model second (None: the model the SAE was trained or
loaded with); the same operations are methods of `SAE` (`sae.analyze_text(model, prompt)`).
"""

from .analysis import AnalysisResult, analyze_text
from .decoder import (
    LogitLens,
    RandomBaseline,
    cosine_similarity,
    diverse_features,
    feature_directions,
    logit_lens,
    logit_lens_many,
    nearest_features,
    random_baseline,
    similar_features,
)
from .examples import Example, ExampleSet, FeatureExamples, get_top_activating_texts, top_activating_examples
from .feature_set import FeatureSet, SAEFeature
from .interventions import (
    FeatureEdit,
    GenerationComparison,
    ablate,
    clamp,
    compare_generations,
    scale,
    set_value,
    splice_sae,
    steer,
)
from .report import collect_dashboard_data, launch_dashboard, visualize_feature
from .stats import FeatureStats, feature_stats

__all__ = [
    "AnalysisResult",
    "Example",
    "ExampleSet",
    "FeatureEdit",
    "FeatureExamples",
    "FeatureSet",
    "FeatureStats",
    "GenerationComparison",
    "LogitLens",
    "RandomBaseline",
    "SAEFeature",
    "ablate",
    "analyze_text",
    "clamp",
    "collect_dashboard_data",
    "compare_generations",
    "cosine_similarity",
    "diverse_features",
    "feature_directions",
    "feature_stats",
    "get_top_activating_texts",
    "launch_dashboard",
    "logit_lens",
    "logit_lens_many",
    "nearest_features",
    "random_baseline",
    "scale",
    "set_value",
    "similar_features",
    "splice_sae",
    "steer",
    "top_activating_examples",
    "visualize_feature",
]
