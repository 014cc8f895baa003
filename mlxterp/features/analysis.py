"""What fires on a text: an SAE's top features for a prompt, per token and overall."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

import mlx.core as mx
import numpy as np

from ..errors import SAEError
from ..activations import ContextSettings
from ..hookpoint import HookPoint
from ..sae.checks import resolve_model, sae_hook_point

if TYPE_CHECKING:
    from ..model import InterpretableModel
    from ..sae.model import SAE


@dataclass
class AnalysisResult:
    """The features an SAE finds in one prompt.

    `codes` (n_tokens, d_hidden) are the SAE codes of every token. `top` lists the `top_k`
    features with the largest activation over the `ranked` tokens (from `drop_first_tokens` on, less
    those above the SAE's norm limit), as (feature, activation, token position), strongest
    first. `per_token[t]` lists token t's own top features as (feature, activation). Iterating
    yields (feature, activation) of `top`.
    """

    prompt: str
    tokens: list[str]
    codes: np.ndarray
    top: list[tuple[int, float, int]]
    per_token: list[list[tuple[int, float]]]
    ranked: np.ndarray
    hook_point: HookPoint

    def __iter__(self) -> Iterator[tuple[int, float]]:
        return iter([(f, a) for f, a, _ in self.top])

    def __len__(self) -> int:
        return len(self.top)

    @property
    def feature_indices(self) -> list[int]:
        return [f for f, _, _ in self.top]

    def activations(self, feature: int) -> np.ndarray:
        """(n_tokens,) the activation of `feature` on each token."""
        return self.codes[:, feature]

    def to_dict(self) -> dict:
        return {
            "prompt": self.prompt,
            "tokens": list(self.tokens),
            "top": [{"feature": f, "activation": a, "position": p} for f, a, p in self.top],
            "per_token": [[[f, a] for f, a in row] for row in self.per_token],
        }

    def __str__(self) -> str:
        lines = [
            f"Top {len(self.top)} features at {self.hook_point.label} for {self.prompt[:60]!r}",
            f"{'rank':>4}  {'feature':>7}  {'max act':>9}  at token",
        ]
        for rank, (feature, act, pos) in enumerate(self.top, 1):
            lines.append(f"{rank:>4}  {feature:>7}  {act:>9.3f}  {self.tokens[pos]!r} ({pos})")
        lines.append("Per token (strongest features):")
        for pos, (token, row) in enumerate(zip(self.tokens, self.per_token)):
            note = "" if self.ranked[pos] else "  (attention sink, not ranked)"
            hits = "  ".join(f"{f}:{a:.2f}" for f, a in row[:5]) or "-"
            lines.append(f"{pos:>4}  {token!r:<16} {hits}{note}")
        return "\n".join(lines)


def analyze_text(
    sae: "SAE",
    model: "InterpretableModel | None" = None,
    prompt: str = "",
    top_k: int = 10,
    contexts: ContextSettings | None = None,
) -> AnalysisResult:
    """The `top_k` features of `prompt` overall (max over tokens) and per token.

    The first `contexts.drop_first_tokens` positions (None: as the SAE was trained) and tokens
    above the SAE's norm limit (attention sinks,
    whose activations SAEs are not trained on) are shown per token but left out of the overall
    ranking, unless the prompt has no other token. `model` None uses `sae.attached_model`.

    >>> result = analyze_text(sae, model, "Artificial intelligence is transforming society")
    >>> print(result)
    """
    if not isinstance(prompt, str) or not prompt:
        raise SAEError("analyze_text needs a non-empty prompt string")
    if top_k < 1:
        raise SAEError(f"top_k must be at least 1, got {top_k}")
    model = resolve_model(sae, model)
    point = sae_hook_point(sae, model)
    drop_first = (contexts or ContextSettings.from_metadata(sae.metadata)).drop_first_tokens
    with model.trace(prompt, default_capture=False) as trace:
        saved = getattr(model.module(point.path), point.port).save()
    codes = np.array(sae.encode(saved.value.astype(mx.float32))[0])
    tokens = model.to_str_tokens(trace.tokens[0])
    ranked = np.array(sae.within_norm_limit(saved.value[0]))
    ranked[:drop_first] = False
    if not ranked.any():
        ranked[:] = True
    ranked_codes = np.where(ranked[:, None], codes, -np.inf)
    peaks = ranked_codes.max(axis=0)
    where = ranked_codes.argmax(axis=0)
    return AnalysisResult(
        prompt=prompt,
        tokens=tokens,
        codes=codes,
        top=[(int(f), float(peaks[f]), int(where[f])) for f in _top_active(peaks, top_k)],
        per_token=[[(int(f), float(row[f])) for f in _top_active(row, top_k)] for row in codes],
        ranked=ranked,
        hook_point=point,
    )


def _top_active(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the (at most) k largest positive entries of `values` (n,), largest first."""
    k = min(k, len(values))
    best = np.argpartition(-values, k - 1)[:k]
    best = best[np.argsort(-values[best], kind="stable")]
    return best[values[best] > 0]
