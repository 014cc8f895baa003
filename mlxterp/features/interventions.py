"""Causal edits through an SAE: splice it into its layer, edit features, steer, compare generations.

All of these declare edits on the open `with model.trace(...)` or `with model.generate(...)`
block (through `Port.edit`), so they compose with every other save and edit in the block.

Units: feature values are SAE codes, the numbers `sae.encode` returns (and the units of
`max_activation` in feature statistics). `steer(..., strength=s)` adds what raising the
feature's code by `s` adds to the SAE's reconstruction, `s * (decode(e_i) - decode(0))`, so the
SAE's input normalisation is accounted for; a strength of a few times the feature's
`max_activation` is a strong push.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import mlx.core as mx
import numpy as np

from ..activations import within_limit
from ..errors import SAEError, TraceError
from ..envoy import Port
from ..tracing import Edit, Positions
from .decoder import feature_directions
from ..sae.checks import check_features, resolve_model, sae_hook_point

if TYPE_CHECKING:
    from ..model import InterpretableModel
    from ..sae.model import SAE


@dataclass(frozen=True)
class FeatureEdit:
    """An edit of some features' codes (..., d_hidden) -> (..., d_hidden); build with the helpers."""

    features: tuple[int, ...]
    kind: str
    value: float | None = None
    low: float | None = None
    high: float | None = None

    def apply(self, codes: mx.array) -> mx.array:
        index = mx.array(self.features)
        chosen = codes[..., index]
        if self.kind == "scale":
            new = chosen * self.value
        elif self.kind == "set":
            new = mx.full(chosen.shape, self.value, dtype=codes.dtype)
        else:
            new = mx.clip(chosen, self.low, self.high)
        edited = mx.array(codes)
        edited[..., index] = new.astype(codes.dtype)
        return edited


def ablate(features: int | Sequence[int]) -> FeatureEdit:
    """Set the features' codes to 0 (seed 001's ablation)."""
    return FeatureEdit(_as_tuple(features), "scale", value=0.0)


def scale(features: int | Sequence[int], factor: float) -> FeatureEdit:
    """Multiply the features' codes by `factor` (amplification when > 1)."""
    return FeatureEdit(_as_tuple(features), "scale", value=_finite(f"scale({features!r}, ...)", "factor", factor))


def set_value(features: int | Sequence[int], value: float) -> FeatureEdit:
    """Set the features' codes to `value` at every edited position, active or not."""
    return FeatureEdit(_as_tuple(features), "set", value=_finite(f"set_value({features!r}, ...)", "value", value))


def clamp(features: int | Sequence[int], min: float | None = None, max: float | None = None) -> FeatureEdit:
    """Clip the features' codes into [min, max] (either bound may be None, not both)."""
    where = f"clamp({features!r}, min={min!r}, max={max!r})"
    if min is None and max is None:
        raise SAEError(f"{where} needs min=, max= or both")
    low = None if min is None else _finite(where, "min", min)
    high = None if max is None else _finite(where, "max", max)
    if low is not None and high is not None and low > high:
        raise SAEError(f"{where}: min is above max, so every code would become {high}: swap them")
    return FeatureEdit(_as_tuple(features), "clamp", low=low, high=high)


def sae_edit_fn(sae: "SAE", edits: Sequence[FeatureEdit] = (), error_term: bool = True,
                codes_point: Callable[[mx.array], mx.array] | None = None) -> Callable:
    """(x, y=None, index=None) -> the SAE's reconstruction from edited codes (+ y - clean
    reconstruction if error_term), for y, the value replaced: x itself for an SAE, the output
    hook point's value for a transcoder (x its input; `splice_edit` declares both).

    With `error_term` the SAE is a transparent window: the output is y plus what the edits change
    in the reconstruction, so with no edits it is exactly y. Tokens above the SAE's norm limit
    (attention sinks it never trained on) pass through unchanged. `index` is the token positions
    to splice (None: all). `codes_point` sees the edited codes (batch, seq, d_hidden), 0 where
    nothing is spliced, and may replace them (the trace's saves, edits and gradients of
    `splice_sae(...).codes`).
    """
    for edit in edits:
        check_features(sae, list(edit.features))

    def spliced(x: mx.array, y: mx.array | None = None, index: mx.array | None = None) -> mx.array:
        raw = x.astype(mx.float32)
        target = raw if y is None else y.astype(mx.float32)
        codes = sae.encode(raw)
        keep = sae.within_norm_limit(raw)
        if y is not None:
            keep = keep & within_limit(target, sae.metadata.get("max_target_norm"))
        if index is not None:
            keep = keep & position_mask(x.shape[1], index)
        edited = codes
        for edit in edits:
            edited = edit.apply(edited)
        if codes_point is not None:
            edited = codes_point(edited * keep[..., None].astype(edited.dtype))
        token_norm = sae.token_norm(raw)
        if error_term:
            # y + (edited - clean reconstruction) rather than reconstruction + (y - clean
            # reconstruction): equal in exact arithmetic, but only this one returns y bit for bit.
            out = target + (sae.decode(edited, token_norm) - sae.decode(codes, token_norm))
        else:
            out = sae.decode(edited, token_norm, x=raw)
        return mx.where(keep[..., None], out, target).astype((x if y is None else y).dtype)

    return spliced


def position_mask(length: int, index) -> mx.array:
    """(length,) bool: True at the token positions `index` (what an index-taking edit is given)."""
    chosen = mx.zeros((length,), dtype=mx.bool_)
    chosen[index] = True
    return chosen


def splice_edit(sae: "SAE", model: "InterpretableModel", fn: Callable, positions: Positions, label: str,
                layer: int | None = None) -> None:
    """Declare `fn(x, y=None, index=None)` (e.g. `sae_edit_fn`) as the edit of what `sae`
    reconstructs, in the open trace or generation, at the token positions `index`.

    An SAE reads and writes one hook point: `fn(x, index=...)` edits it. A transcoder reads its
    input hook point and writes its output one: `fn(x, y, index)` gets both and returns the new y.
    """
    read = sae_hook_point(sae, model, layer)
    out = sae.output_hook_point
    write = model.hook_point(out.layer, out.component)
    interventions = model._active_interventions(label)
    if any(e.label == label for e in interventions.edits.get((write.path, write.port), ())):
        raise SAEError(f"an SAE is already spliced at {write.path} in this block: splice one SAE per hook point")
    if write == read:
        interventions.add_edit(write.path, write.port,
                               Edit(lambda x, index: fn(x, index=index), positions, label, takes_index=True))
        return
    seen: dict[str, mx.array] = {}

    def remember(x: mx.array, index) -> mx.array:
        seen["x"] = x
        return x

    interventions.add_edit(read.path, read.port, Edit(remember, positions, label, takes_index=True))
    interventions.add_edit(write.path, write.port,
                           Edit(lambda y, index: fn(seen["x"], y, index), positions, label, takes_index=True))


def splice_sae(
    sae: "SAE",
    model: "InterpretableModel | None" = None,
    *edits: FeatureEdit,
    error_term: bool = True,
    layer: int | None = None,
    positions: Positions = slice(1, None),
) -> "Splice":
    """Replace the SAE's hook point output by its reconstruction, with `edits` applied to codes
    (a transcoder: replace its output hook point, the MLP's output, by what it makes of its input).

    Call inside `with model.trace(...)` or `with model.generate(...)`. `positions` defaults to
    every position but the first (the attention sink, which SAEs are not trained on); tokens
    above the SAE's norm limit are left alone wherever they are. Returns a `Splice`, whose
    `.codes` port saves, edits or takes the gradient of the codes (batch, seq, d_hidden).

    >>> with model.trace(text) as trace:
    ...     splice_sae(sae, model, ablate([12, 40]), scale(7, 4.0))
    ...     logits = model.output.save()
    """
    model = resolve_model(sae, model)
    path = sae_hook_point(sae, model, layer).path
    point = functools.partial(model._active_interventions("splice_sae()").inner, path, "codes")
    splice_edit(sae, model, sae_edit_fn(sae, edits, error_term, point), positions, "splice_sae()", layer)
    return Splice(sae, Port(model, path, "codes"))


@dataclass(frozen=True)
class Splice:
    """An SAE spliced into the open trace; `codes` is the port of its codes, e.g.
    `splice.codes.save()`, `splice.codes.grad.save()` (with a metric), `splice.codes.edit(fn)`."""

    sae: "SAE"
    codes: Port


def steer(
    sae: "SAE",
    model: "InterpretableModel | None" = None,
    layer: int | None = None,
    feature_idx: int | Sequence[int] | None = None,
    strength: float | Sequence[float] = 1.0,
    positions: Positions = None,
) -> None:
    """Add `strength * direction(feature_idx)` to the SAE's hook point in the open trace/generation.

    The direction is in raw activation units per unit of code (see the module docstring), so
    `strength` is in the units of the feature's activations. Several features may be given with
    one strength each (or one shared strength). `layer`, if given, must be the SAE's layer.

    >>> with model.generate("My favourite place is", max_tokens=20) as gen:
    ...     steer(sae, model, feature_idx=1234, strength=40.0)
    >>> gen.text
    """
    if feature_idx is None:
        raise SAEError("steer needs feature_idx=<the feature to add>")
    model = resolve_model(sae, model)
    sae_hook_point(sae, model, layer)
    out = sae.output_hook_point  # a transcoder's features live in its output space
    write = model.hook_point(out.layer, out.component)
    path = write.path
    indices = check_features(sae, feature_idx)
    given = np.asarray(strength, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(given)):
        raise SAEError(f"steer at {path} (features {[int(i) for i in indices]}) got strength={strength!r}: pass finite numbers")
    strengths = mx.array(given.astype(np.float32))
    if strengths.size not in (1, len(indices)):
        raise SAEError(f"got {strengths.size} strengths for {len(indices)} features: pass one, or one per feature")
    strengths = mx.broadcast_to(strengths, (len(indices),))[:, None]

    def add_features(x: mx.array) -> mx.array:
        directions = feature_directions(sae, indices, sae.token_norm(x.astype(mx.float32)))
        return (x + mx.sum(directions * strengths, axis=-2)).astype(x.dtype)

    Port(model, path, write.port).edit(add_features, positions, f"steer(feature_idx={feature_idx!r})")


@dataclass
class GenerationComparison:
    """The same prompt generated without and with edits: texts and the new token ids."""

    prompt: str
    baseline: str
    edited: str
    baseline_tokens: list[int]
    edited_tokens: list[int]

    def __str__(self) -> str:
        return (
            f"prompt:   {self.prompt!r}\nbaseline: {self.baseline!r}\nedited:   {self.edited!r}"
        )


def compare_generations(
    model: "InterpretableModel",
    prompt: str,
    edit_fn: Callable[[], None],
    max_tokens: int = 30,
    **generate_options,
) -> GenerationComparison:
    """Generate from `prompt` twice: plain, then with `edit_fn()` called inside the block.

    `edit_fn` declares edits, e.g. `lambda: steer(sae, model, feature_idx=3, strength=20)` or
    `lambda: splice_sae(sae, model, ablate(3))`. Generation is greedy unless a temperature
    (and seed) is passed in `generate_options`.
    """
    if not callable(edit_fn):
        raise TraceError(f"edit_fn must be a function declaring edits, got {type(edit_fn).__name__}")
    baseline = model.generate(prompt, max_tokens=max_tokens, **generate_options)
    with model.generate(prompt, max_tokens=max_tokens, **generate_options) as edited:
        edit_fn()
    return GenerationComparison(prompt, baseline.text, edited.text, baseline.tokens, edited.tokens)


def _finite(where: str, name: str, value) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise SAEError(f"{where}: {name} must be a number, got {value!r}") from None
    if not np.isfinite(number):
        raise SAEError(f"{where}: {name}={value!r} is not finite: pass a finite number")
    return number


def _as_tuple(features: int | Sequence[int]) -> tuple[int, ...]:
    return tuple(int(f) for f in np.atleast_1d(np.asarray(features)))

