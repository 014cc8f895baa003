"""The residual logit lens: the logits each layer's residual stream would give, for all layers at once.

Each block's output (the residual stream after it) goes through the model's final norm and
unembedding (`model.unembed`), as the last block's output does in the real forward; so the last
layer's lens is the model's own logits. (Feature logit lenses, of SAE decoder directions, are
`mlxterp.features.logit_lens`.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import mlx.core as mx
import numpy as np

from .errors import TraceError

if TYPE_CHECKING:
    from .model import InterpretableModel


@dataclass
class LogitLens:
    """`logits[i, p]` (len(layers), seq, vocab): the logits of layer `layers[i]`'s residual stream at
    position p. `tokens` are the input tokens, `token_ids` their ids, `model` the model's name,
    `decode` turns a token id into its text."""

    logits: mx.array
    layers: list[int]
    tokens: list[str]
    token_ids: list[int]
    model: str
    decode: Callable[[int], str] = field(default=str, repr=False)

    def probabilities(self) -> mx.array:
        """softmax of `logits` over the vocabulary, (len(layers), seq, vocab) float32."""
        return mx.softmax(self.logits.astype(mx.float32), axis=-1)

    def top(self, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
        """The `k` most likely next tokens per (layer, position): ids and probabilities, each
        (len(layers), seq, k), most likely first."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise TraceError(f"k must be a positive int, got {k!r}")
        probs = self.probabilities()
        ids = mx.argsort(-probs, axis=-1)[..., :k]
        return np.array(ids), np.array(mx.take_along_axis(probs, ids, axis=-1))

    def rank_of_next(self) -> np.ndarray:
        """(len(layers), seq - 1): the rank (0 = top) of the actual next input token at each position."""
        nxt = mx.array(self.token_ids[1:])[None, :, None]
        logits = self.logits[:, :-1].astype(mx.float32)
        target = mx.take_along_axis(logits, mx.broadcast_to(nxt, (*logits.shape[:2], 1)), axis=-1)
        return np.array((logits > target).sum(axis=-1))

    def to_record(self, k: int = 5) -> dict:
        """A JSON-able dict for `mlxterp.viz` (plot_logit_lens, write_logit_lens_page):
        {"model", "tokens", "layers", "top": [[[[token, prob], ...] per position] per layer]}."""
        ids, probs = self.top(k)
        top = [[[[self.decode(int(t)), float(p)] for t, p in zip(ids[i, j], probs[i, j])]
                for j in range(ids.shape[1])] for i in range(ids.shape[0])]
        return {"model": self.model, "tokens": list(self.tokens), "layers": list(self.layers), "top": top}


def residual_logit_lens(model: "InterpretableModel", text, layers: list[int] | None = None) -> LogitLens:
    """The logit lens of one text (a string or its token ids) at `layers` (default: all blocks),
    from one trace saving the block outputs and one batched unembedding."""
    tokens, _ = model.tokenize_batch(text)
    if tokens.shape[0] != 1:
        raise TraceError(
            f"residual_logit_lens takes one text, got {tokens.shape[0]}: call it once per text"
        )
    layers = list(range(model.n_layers)) if layers is None else [model.anatomy.check_layer(l) for l in layers]
    if not layers:
        raise TraceError("layers is empty: pass at least one layer, or None for all of them")
    with model.trace(tokens):
        saved = [model.layers[layer].output.save() for layer in layers]
    residual = mx.stack([s.value[0] for s in saved])  # (len(layers), seq, d_model)
    logits = model.unembed(residual)
    ids = [int(t) for t in tokens[0].tolist()]
    decode = lambda i: model.tokenizer.decode([i])  # noqa: E731
    return LogitLens(logits, layers, [decode(i) for i in ids], ids, model.name, decode)
