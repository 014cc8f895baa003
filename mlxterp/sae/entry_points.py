"""The seed's analysis methods of the SAE (`sae.analyze_text(model, ...)`, `sae.steer(...)`, ...).

They are implemented above the SAE, in mlxterp.features and mlxterp.viz, which register their
functions here when imported (importing mlxterp imports both), so that the SAE never imports
upward. Each method is a thin entry point to the function named in its docstring.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from ..errors import SAEError

_FEATURE_TOOLS: dict[str, Callable[..., Any]] = {}


def register_feature_tools(**tools: Callable[..., Any]) -> None:
    """Make `tools` (name -> function taking the SAE first) the implementations of SAE methods."""
    _FEATURE_TOOLS.update(tools)


def _tool(name: str) -> Callable[..., Any]:
    if name not in _FEATURE_TOOLS:
        raise SAEError(f"sae.{name} is implemented in mlxterp.features / mlxterp.viz: import mlxterp first")
    return _FEATURE_TOOLS[name]


class FeatureToolMethods:
    """Mixin of `SAE`: the seed's feature-analysis methods, each the registered function with
    this SAE as its first argument; `model` None means the model the SAE is attached to."""

    def analyze_text(self, model: Any = None, prompt: str = "", top_k: int = 10, **options: Any):
        """The `top_k` features of `prompt`, overall and per token (`mlxterp.analyze_text`)."""
        return _tool("analyze_text")(self, model, prompt, top_k, **options)

    def get_top_activating_texts(self, feature_idx: int, dataset: Any = None, top_k: int = 20,
                                 model: Any = None, **options: Any):
        """The contexts where one feature fires most, plus lower bands (`mlxterp.get_top_activating_texts`)."""
        return _tool("get_top_activating_texts")(self, feature_idx, dataset, top_k, model, **options)

    def top_activating_examples(self, model: Any = None, dataset: Any = None,
                                feature_indices: Any = None, top_k: int = 20, **options: Any):
        """Top examples of every feature (or `feature_indices`) in one pass (`mlxterp.top_activating_examples`)."""
        return _tool("top_activating_examples")(self, model, dataset, feature_indices, top_k, **options)

    def feature_stats(self, model: Any = None, dataset: Any = None, **options: Any):
        """Firing frequency, mean/max activation and histograms per feature (`mlxterp.feature_stats`)."""
        return _tool("feature_stats")(self, model, dataset, **options)

    def logit_lens(self, feature_idx: int, model: Any = None, k: int = 10):
        """The tokens a feature's decoder direction promotes and suppresses (`mlxterp.logit_lens`)."""
        return _tool("logit_lens")(self, feature_idx, model, k)

    def nearest_features(self, feature_idx: int, n: int = 10):
        """The `n` features with the closest decoder directions, as (index, cosine)."""
        return _tool("nearest_features")(self, feature_idx, n)

    def steer(self, model: Any = None, layer: int | None = None, feature_idx: Any = None,
              strength: Any = 1.0, positions: Any = None) -> None:
        """Inside `with model.trace(...)` / `model.generate(...)`: add `strength` units of a
        feature's direction at this SAE's hook point (`mlxterp.steer`)."""
        _tool("steer")(self, model, layer, feature_idx, strength, positions)

    def visualize_feature(self, feature_idx: int, model: Any = None, dataset: Any = None,
                          path: str | os.PathLike | None = None, **options: Any):
        """Write one feature's self-contained HTML page; returns its path (`mlxterp.visualize_feature`)."""
        return _tool("visualize_feature")(self, feature_idx, model, dataset, path, **options)

    def launch_dashboard(self, model: Any = None, dataset: Any = None, out_dir: str | os.PathLike | None = None,
                         port: int = 8000, block: bool = True, **options: Any):
        """Write the feature dashboard and serve it on localhost (`mlxterp.launch_dashboard`)."""
        return _tool("launch_dashboard")(self, model, dataset, out_dir, port, block, **options)

    def export_neuronpedia(self, model: Any = None, dataset: Any = None,
                           out_dir: str | os.PathLike = "neuronpedia", **options: Any):
        """Write the features in Neuronpedia's feature JSON (batch files); returns their paths
        (`mlxterp.export_neuronpedia`)."""
        return _tool("export_neuronpedia")(self, model, dataset, out_dir, **options)
