"""Attention heads: head-level activation patching, and induction-head scores on repeated random tokens."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import mlx.core as mx
import numpy as np
from tqdm.auto import tqdm

from .anatomy import get_module
from .attention import check_supported, n_heads
from .errors import TraceError
from .patching import Metric, PatchingResult, clean_and_corrupted, patch_positions, recovery_of

if TYPE_CHECKING:
    from .model import InterpretableModel


def attention_heads(model: "InterpretableModel", layer: int = 0) -> int:
    """The number of attention heads of block `layer`, refusing families mlxterp cannot recompute."""
    path = model.hook_point(layer, "attn").path
    module = get_module(model.model, path)
    check_supported(module, path)
    return n_heads(module)


def top_heads(scores: np.ndarray, k: int = 5) -> list[tuple[int, int, float]]:
    """The `k` highest (layer, head, score) of a (n_layers, n_heads) array, highest first."""
    order = np.argsort(scores, axis=None)[::-1][:k]
    return [(int(i // scores.shape[1]), int(i % scores.shape[1]), float(scores.flat[i])) for i in order]


def head_patching(
    model: "InterpretableModel",
    clean: str,
    corrupted: str,
    metric: Metric | None = None,
    layers: list[int] | None = None,
    per_position: bool = False,
    progress: bool = True,
) -> PatchingResult:
    """`activation_patching` head by head: each head's output (before the output projection) from
    the clean run replaces the corrupted run's, one head (and, with `per_position`, one position)
    at a time. `recovery` is (n_layers, n_heads), or (n_layers, n_heads, seq) per position; the
    row i is `layers[i]` (all layers by default). One forward per layer (x position), whose batch
    holds one copy of the corrupted prompt per head, each with its own head patched."""
    layers = list(range(model.n_layers)) if layers is None else [model.anatomy.check_layer(l) for l in layers]
    count = attention_heads(model, layers[0] if layers else 0)
    paths = [model.hook_point(layer, "attn").path for layer in layers]
    corrupted_ids, sources, metric, clean_value, corrupted_value = clean_and_corrupted(
        model, clean, corrupted, metric, lambda: [model.module(path).heads.save() for path in paths])
    positions = patch_positions(per_position, corrupted_ids.shape[1])
    batch = corrupted_ids.shape[0]
    patched = np.zeros((len(layers), count, len(positions)))
    bar = tqdm(total=len(layers) * len(positions), desc="head patching", unit="forward", disable=not progress)
    for i, path in enumerate(paths):
        for j, position in enumerate(positions):
            with model.trace(mx.concatenate([corrupted_ids] * count)):
                model.module(path).heads.edit(_each_row_one_head(sources[i].value, position), label="patch head")
                logits = model.output.save()
            patched[i, :, j] = [float(metric(logits.value[h * batch:(h + 1) * batch])) for h in range(count)]
            bar.update()
    bar.close()
    recovery = recovery_of(patched, clean_value, corrupted_value)
    squeeze = (lambda a: a[..., 0]) if not per_position else (lambda a: a)
    return PatchingResult("heads", clean_value, corrupted_value, squeeze(patched), squeeze(recovery))


def _each_row_one_head(source: mx.array, position: int | None):
    """An edit of per-head outputs (heads x batch, seq, heads, head_dim) in which rows
    h * batch ... (h + 1) * batch - 1 take head h from `source` (batch, seq, heads, head_dim), at
    `position` only or at every position."""
    batch, length, count = source.shape[:3]
    chosen = mx.repeat(mx.eye(count, dtype=mx.bool_), batch, axis=0)[:, None, :, None]
    if position is not None:
        chosen = chosen & (mx.arange(length) == position)[None, :, None, None]
    tiled = mx.concatenate([source] * count)
    return lambda a: mx.where(chosen, tiled.astype(a.dtype), a)


@dataclass
class InductionScores:
    """Per-head induction scores: `scores[layer, head]` is the mean attention, over the second copy
    of `n_sequences` random sequences of `seq_len` tokens repeated twice, from each token to the
    token after its earlier occurrence (where an induction head looks). `previous_token[layer,
    head]` is the mean attention from each token after the second to the one before it (previous-
    token heads, the other half of the induction circuit). `tokens` are the inputs."""

    scores: np.ndarray
    previous_token: np.ndarray
    seq_len: int
    n_sequences: int
    tokens: np.ndarray

    def top(self, k: int = 5) -> list[tuple[int, int, float]]:
        """The `k` highest-scoring heads as (layer, head, score)."""
        return top_heads(self.scores, k)


def repeated_random_tokens(model: "InterpretableModel", seq_len: int, n_sequences: int, seed: int) -> np.ndarray:
    """(n_sequences, [bos +] 2 * seq_len) token ids: random non-special tokens, repeated once,
    after the tokenizer's BOS token when it has one."""
    special = set(getattr(model.tokenizer, "all_special_ids", None) or [])
    allowed = np.setdiff1d(np.arange(model.vocab_size), np.array(sorted(special), dtype=np.int64))
    rng = np.random.default_rng(seed)
    half = rng.choice(allowed, size=(n_sequences, seq_len))
    bos = getattr(model.tokenizer, "bos_token_id", None)
    prefix = np.full((n_sequences, 1), bos) if isinstance(bos, int) else np.zeros((n_sequences, 0), dtype=np.int64)
    return np.concatenate([prefix, half, half], axis=1).astype(np.int32)


def induction_scores(
    model: "InterpretableModel", seq_len: int = 50, n_sequences: int = 8, seed: int = 0
) -> InductionScores:
    """Score every head for induction (Olsson et al. 2022): run random token sequences repeated
    twice and measure how much each head attends, from each token of the second copy, to the
    token that followed the same token in the first copy. One forward with patterns saved."""
    if not (isinstance(seq_len, int) and seq_len >= 2 and isinstance(n_sequences, int) and n_sequences >= 1):
        raise TraceError(f"seq_len must be an int >= 2 and n_sequences an int >= 1, got {seq_len!r}, {n_sequences!r}")
    attention_heads(model)
    tokens = repeated_random_tokens(model, seq_len, n_sequences, seed)
    start = tokens.shape[1] - seq_len  # first query of the second copy
    queries = np.arange(start, tokens.shape[1])
    with model.trace(mx.array(tokens)):
        patterns = [model.module(model.hook_point(l, "attn").path).pattern.save() for l in range(model.n_layers)]
    keys = mx.array(queries - seq_len + 1)
    scores = [p.value[:, :, mx.array(queries), keys].mean(axis=(0, 2)) for p in patterns]
    after = mx.arange(2, tokens.shape[1])  # the first token is a sink for many heads: leave it out
    previous = [p.value[:, :, after, after - 1].mean(axis=(0, 2)) for p in patterns]
    return InductionScores(np.array(mx.stack(scores)), np.array(mx.stack(previous)), seq_len, n_sequences, tokens)
