"""Max-activating examples: for every feature at once, the token windows where it fires most.

One pass over a dataset keeps, per feature, the `top_k` highest activations and a uniform
reservoir sample of all its activations (for examples from lower activation bands), each with
the feature's activations over a window of tokens around the peak. The merge per batch is a
few vectorised numpy operations over all features, so the pass costs about the model's forward.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np

from ..activations import ContextSettings
from ..sae.checks import check_feature, check_features, resolve_model
from .scan import CodeBatch, Contexts, scan

if TYPE_CHECKING:
    from ..model import InterpretableModel
    from ..sae.model import SAE

DEFAULT_BANDS = (0.0, 0.25, 0.5, 0.75)


@dataclass
class Example:
    """A window of tokens with one feature's activation on each; `peak` indexes the maximum."""

    tokens: list[str]
    activations: list[float]
    peak: int
    max_activation: float
    doc: int

    @property
    def text(self) -> str:
        return "".join(self.tokens)

    def to_dict(self) -> dict:
        """The JSON example record of docs/architecture.md."""
        return {
            "tokens": list(self.tokens),
            "activations": [round(float(a), 4) for a in self.activations],
            "peak": int(self.peak),
            "max_activation": float(self.max_activation),
        }

    def __str__(self) -> str:
        marked = [f"[[{t}]]" if i == self.peak else t for i, t in enumerate(self.tokens)]
        return f"[{self.max_activation:.3g}] {''.join(marked)!r}"


@dataclass
class FeatureExamples:
    """A feature's highest-activation examples and examples from lower activation bands."""

    feature: int
    top: list[Example]
    bands: list[tuple[str, list[Example]]] = field(default_factory=list)
    # Per band: (lowest, highest activation, fraction of the feature's sampled activations inside).
    band_ranges: list[tuple[float, float, float]] = field(default_factory=list)

    def __iter__(self) -> Iterator[Example]:
        return iter(self.top)

    def __len__(self) -> int:
        return len(self.top)

    def __getitem__(self, rank: int) -> Example:
        return self.top[rank]

    def __str__(self) -> str:
        lines = [f"Feature {self.feature}: top activations"]
        lines += [f"  {e}" for e in self.top] or ["  (never active)"]
        for label, examples in self.bands:
            if examples:
                lines.append(f"  activations {label}:")
                lines += [f"    {e}" for e in examples]
        return "\n".join(lines)


class TopPerFeature:
    """Per feature, the `k` entries with the highest score, with activation windows.

    Arrays are (n_features, k), in no particular order: `score` (-inf where empty), `value`
    (the activation), `token` (flat token index, -1 where empty), and `window`
    (n_features, k, before + 1 + after). An entry that enters takes the slot of one that
    leaves, so a batch writes only its own new entries.
    """

    def __init__(self, n_features: int, k: int, before: int, after: int):
        self.k, self.before, self.after = k, before, after
        self.score = np.full((n_features, k), -np.inf, dtype=np.float32)
        self.value = np.zeros((n_features, k), dtype=np.float32)
        self.token = np.full((n_features, k), -1, dtype=np.int64)
        self.window = np.full((n_features, k, before + 1 + after), np.nan, dtype=np.float32)
        self.floor = np.full(n_features, -np.inf, dtype=np.float32)

    def offer(self, batch: CodeBatch, score: np.ndarray) -> None:
        """Merge the batch's nonzero entries, ranked by `score` (one per entry)."""
        passing = np.flatnonzero(score > self.floor[batch.feature])
        if passing.size == 0:
            return
        feature, score = batch.feature[passing], score[passing]
        order = np.lexsort((-score, feature))
        feature, score, entry = feature[order], score[order], passing[order]
        rank = _rank_within_groups(feature)
        top = rank < self.k
        feature, score, entry, rank = feature[top], score[top], entry[top], rank[top]
        features, slot = np.unique(feature, return_inverse=True)
        candidates = np.full((len(features), self.k), -np.inf, dtype=np.float32)
        candidates[slot, rank] = score
        merged = np.concatenate([self.score[features], candidates], axis=1)
        # Stable: at equal scores a held entry (or an empty held slot) wins over a candidate,
        # so no empty candidate slot is ever taken in.
        best = np.argsort(-merged, axis=1, kind="stable")[:, : self.k]
        kept = np.zeros(merged.shape, dtype=bool)
        kept[np.arange(len(features))[:, None], best] = True
        out_row, out_slot = np.nonzero(~kept[:, : self.k])
        in_row, in_rank = np.nonzero(kept[:, self.k :])
        by_position = np.full((len(features), self.k), -1, dtype=np.int64)
        by_position[slot, rank] = entry
        self._write(batch, features[out_row], out_slot, by_position[in_row, in_rank],
                    merged[in_row, self.k + in_rank])
        self.floor[features] = self.score[features].min(axis=1)

    def _write(self, batch: CodeBatch, feature, slot, entry, new_score) -> None:
        """Put the batch's entries `entry` (indices into its nonzeros) into (feature, slot)."""
        self.score[feature, slot] = new_score
        self.value[feature, slot] = batch.value[entry]
        self.token[feature, slot] = batch.first + batch.row[entry]
        self.window[feature, slot] = batch.windows(batch.row[entry], batch.feature[entry], self.before, self.after)

    def ranked(self, feature: int) -> np.ndarray:
        """Slots of `feature` holding an entry, highest score first."""
        filled = np.flatnonzero(self.token[feature] >= 0)
        return filled[np.argsort(-self.score[feature, filled], kind="stable")]


class ExampleCollector:
    """A scan consumer keeping top examples and a reservoir sample per feature."""

    def __init__(self, n_features: int, top_k: int, reservoir: int, before: int, after: int, seed: int):
        self.top = TopPerFeature(n_features, top_k, before, after)
        self.sample = TopPerFeature(n_features, reservoir, before, after) if reservoir else None
        self.rng = np.random.default_rng(seed)

    def update(self, batch: CodeBatch) -> None:
        self.top.offer(batch, batch.value)
        if self.sample is not None:
            # Keeping the entries with the k largest uniform keys is a uniform sample of size k.
            self.sample.offer(batch, self.rng.random(len(batch.value), dtype=np.float32))


class ExampleSet:
    """Examples of many features from one pass; `examples[feature]` builds FeatureExamples.

    Example objects are built on access only, so a pass over every feature stays cheap.
    """

    def __init__(
        self,
        collector: ExampleCollector,
        contexts: Contexts,
        feature_indices: np.ndarray,
        model: "InterpretableModel",
        bands: Sequence[float] = DEFAULT_BANDS,
        per_band: int = 5,
    ):
        self.collector = collector
        self.contexts = contexts
        self.features = [int(i) for i in feature_indices]
        self._column = {f: c for c, f in enumerate(self.features)}
        self.bands = tuple(bands)
        self.per_band = per_band
        self._token_str = _token_decoder(model)

    def __len__(self) -> int:
        return len(self.features)

    def __contains__(self, feature: int) -> bool:
        return feature in self._column

    def __getitem__(self, feature: int) -> FeatureExamples:
        if feature not in self._column:
            raise KeyError(
                f"feature {feature} was not scanned: scanned features are "
                f"{_preview(self.features)}; pass it in feature_indices"
            )
        column = self._column[feature]
        top = self.collector.top
        examples = [self._example(top, column, j) for j in top.ranked(column)]
        return FeatureExamples(feature, examples, *self._band_examples(column, examples))

    def _band_examples(self, column: int, top: list[Example]):
        """(bands, band_ranges) of FeatureExamples, highest band first."""
        sample = self.collector.sample
        if sample is None or not top:
            return [], []
        peak = top[0].max_activation
        sampled = sample.token[column] >= 0
        in_top = np.isin(sample.token[column], self.collector.top.token[column])
        found = np.flatnonzero(sampled & ~in_top)
        values, every = sample.value[column, found], sample.value[column, sampled]
        out, ranges = [], []
        for low, high in reversed(list(zip(self.bands[:-1], self.bands[1:]))):
            inside = found[(values > low * peak) & (values <= high * peak)]
            inside = inside[np.argsort(-sample.value[column, inside], kind="stable")][: self.per_band]
            examples = [self._example(sample, column, j) for j in inside]
            out.append((f"{low:.0%}–{high:.0%} of max", examples))
            share = np.mean((every > low * peak) & (every <= high * peak))
            ranges.append((low * peak, high * peak, float(share)))
        return out, ranges

    def _example(self, store: TopPerFeature, column: int, j: int) -> Example:
        token = int(store.token[column, j])
        context, position = divmod(token, self.contexts.length)
        window = store.window[column, j]
        start = position - store.before
        positions = np.arange(start, start + len(window))
        doc = int(self.contexts.docs[context, position])
        inside = ~np.isnan(window)
        inside[inside] &= self.contexts.docs[context, positions[inside]] == doc
        ids = self.contexts.tokens[context, positions[inside]]
        return Example(
            tokens=[self._token_str(int(i)) for i in ids],
            activations=[float(a) for a in window[inside]],
            peak=int(np.flatnonzero(positions[inside] == position)[0]),
            max_activation=float(store.value[column, j]),
            doc=doc,
        )


def collect_examples(
    sae: "SAE",
    model: "InterpretableModel",
    dataset: Any,
    feature_indices: Sequence[int] | None,
    top_k: int = 20,
    window: tuple[int, int] = (16, 8),
    bands: Sequence[float] = DEFAULT_BANDS,
    per_band: int = 5,
    reservoir: int = 64,
    seed: int = 0,
    extra_consumers: Sequence[Any] = (),
    **scan_options,
) -> ExampleSet:
    """One scan with an ExampleCollector (plus `extra_consumers`, e.g. a StatsCollector)."""
    indices = np.arange(sae.d_hidden) if feature_indices is None else check_features(sae, feature_indices)
    collector = ExampleCollector(len(indices), top_k, reservoir if len(bands) >= 2 else 0, *window, seed)
    contexts = scan(
        sae, model, dataset, [collector, *extra_consumers],
        feature_indices=None if feature_indices is None else indices, **scan_options,
    )
    return ExampleSet(collector, contexts, indices, model, bands, per_band)


def top_activating_examples(
    sae: "SAE",
    model: "InterpretableModel | None" = None,
    dataset: Any = None,
    feature_indices: Sequence[int] | None = None,
    top_k: int = 20,
    n_tokens: int | None = 100_000,
    contexts: ContextSettings | None = None,
    contexts_per_forward: int = 8,
    window: tuple[int, int] = (16, 8),
    bands: Sequence[float] = DEFAULT_BANDS,
    per_band: int = 5,
    seed: int = 0,
    progress: bool = False,
) -> ExampleSet:
    """The `top_k` max-activating examples of every feature (or of `feature_indices`), in one pass.

    Args:
        model: None uses `sae.attached_model`.
        dataset: what `scan` reads (texts, None for the bundled corpus, an `ActivationStore`, `Contexts`).
        n_tokens: scan at most this many token positions (None: the whole dataset).
        contexts: how texts become contexts (None: as the SAE was trained); see `scan`.
        window: (tokens before, tokens after) the peak kept in each example.
        bands: edges, as fractions of the feature's maximum, of the activation bands below the
            top examples: `per_band` examples are drawn from each band (out of a uniform sample
            of the feature's activations), highest band first. () for none.

    Returns:
        An ExampleSet: `examples[feature]` is a FeatureExamples (`.top`, `.bands`).

    >>> examples = top_activating_examples(sae, model, texts, feature_indices=[3, 7], top_k=5)
    >>> print(examples[3])
    """
    model = resolve_model(sae, model)
    return collect_examples(
        sae, model, dataset, feature_indices, top_k, window, bands, per_band, seed=seed,
        n_tokens=n_tokens, contexts=contexts, contexts_per_forward=contexts_per_forward,
        progress=progress,
    )


def get_top_activating_texts(
    sae: "SAE",
    feature_idx: int,
    dataset: Any = None,
    top_k: int = 20,
    model: "InterpretableModel | None" = None,
    **options,
) -> FeatureExamples:
    """The `top_k` contexts of `dataset` where feature `feature_idx` fires most, highest first.

    Each example has the peak token, its activation and the feature's activation on every token
    of the window around it; `.bands` holds examples from lower activation bands. `options` are
    those of `top_activating_examples` (n_tokens, window, bands, ...). `model` None uses
    `sae.attached_model`. For many features, one `top_activating_examples` call is much cheaper.

    >>> for example in get_top_activating_texts(sae, 1234, texts, top_k=5):
    ...     print(example.max_activation, example.text)
    """
    feature = check_feature(sae, feature_idx)
    found = top_activating_examples(sae, model, dataset, [feature], top_k=top_k, **options)
    return found[feature]


def _rank_within_groups(sorted_keys: np.ndarray) -> np.ndarray:
    """Position of each element within its run of equal keys (keys sorted)."""
    if len(sorted_keys) == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    lengths = np.diff(np.r_[starts, len(sorted_keys)])
    return np.arange(len(sorted_keys)) - np.repeat(starts, lengths)


def _token_decoder(model: "InterpretableModel"):
    cache: dict[int, str] = {}

    def token_str(token_id: int) -> str:
        if token_id not in cache:
            cache[token_id] = model.tokenizer.decode([token_id])
        return cache[token_id]

    return token_str


def _preview(items: list[int], n: int = 10) -> str:
    head = ", ".join(str(i) for i in items[:n])
    return f"[{head}{', ...' if len(items) > n else ''}]"
