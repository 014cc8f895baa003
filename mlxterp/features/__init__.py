"""Finding, naming and steering an SAE's features: top examples, statistics, logit lens, edits,
and evaluation with the language model.

Every function takes the SAE first and the model second (None: the model the SAE was trained or
loaded with); the seed's operations are also methods of `SAE` (`sae.analyze_text(model, prompt)`),
registered here.
"""

from ..sae.entry_points import register_feature_tools

from .analysis import AnalysisResult, analyze_text
from .attribution import AblationCheck, FeatureAttribution, ablation_check, feature_attribution
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
from .evaluate import evaluate_sae
from .report import collect_dashboard_data
from .stats import feature_stats

register_feature_tools(
    analyze_text=analyze_text,
    get_top_activating_texts=get_top_activating_texts,
    top_activating_examples=top_activating_examples,
    feature_stats=feature_stats,
    logit_lens=logit_lens,
    nearest_features=nearest_features,
    steer=steer,
)

__all__ = [
    "AblationCheck",
    "AnalysisResult",
    "Example",
    "ExampleSet",
    "FeatureAttribution",
    "FeatureEdit",
    "FeatureExamples",
    "FeatureSet",
    "GenerationComparison",
    "LogitLens",
    "RandomBaseline",
    "SAEFeature",
    "ablate",
    "ablation_check",
    "analyze_text",
    "clamp",
    "collect_dashboard_data",
    "compare_generations",
    "cosine_similarity",
    "diverse_features",
    "evaluate_sae",
    "feature_attribution",
    "feature_directions",
    "feature_stats",
    "get_top_activating_texts",
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
]
