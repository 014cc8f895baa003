"""The attention half of the causal toolkit on SmolLM2-135M: every figure docs/causal.md shows.

    python examples/causal_tour.py            # a few minutes on a 2-core CPU

Attention patterns, per-head outputs, head-level patching on an IOI prompt, the residual logit
lens and induction-head scores; the output is what the docs quote.
"""

from mlxterp.platform import use_fast_blas  # noqa: E402

use_fast_blas()  # on Linux, re-executes with OpenBLAS preloaded

import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402

from mlxterp import InterpretableModel  # noqa: E402
from mlxterp.heads import head_patching, induction_scores, top_heads  # noqa: E402
from mlxterp.lens import residual_logit_lens  # noqa: E402
from mlxterp.patching import logit_difference  # noqa: E402

model = InterpretableModel.default()
CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPTED = "When Mary and John went to the store, Mary gave a drink to"

print("## Induction heads")
scores = induction_scores(model)
top = scores.top(5)
print("top:", [(l, h, round(s, 3)) for l, h, s in scores.top(6)])
print("per-layer max:", [round(float(x), 2) for x in scores.scores.max(1)])

tokens = mx.array(scores.tokens)
half = scores.seq_len


def repeat_loss(heads):
    """Mean next-token loss over the second copy of the random sequences, with `heads` zeroed."""
    with model.trace(tokens):
        for l, h in heads:
            model.layers[l].self_attn.heads[h].zero()
        logits = model.output.save()
    logp = logits.value[:, -half:-1].astype(mx.float32)
    logp = logp - mx.logsumexp(logp, axis=-1, keepdims=True)
    return -float(mx.take_along_axis(logp, tokens[:, -half + 1:, None], axis=-1).mean())


low = [(int(i // scores.scores.shape[1]), int(i % scores.scores.shape[1])) for i in np.argsort(scores.scores, axis=None)[:5]]
print(f"loss on the repeated half: {repeat_loss([]):.3f}; top-5 induction heads zeroed "
      f"{repeat_loss([(l, h) for l, h, _ in top]):.3f}; 5 lowest-scoring heads zeroed {repeat_loss(low):.3f}")

print("## Attention patterns")
REPEAT = "The cat sat on the mat. The cat sat on the"
(layer, head, _) = top[0]
with model.trace(REPEAT) as trace:
    pattern = model.module(model.hook_point(layer, "attn").path).pattern.save()
    logits = model.output.save()
tokens = model.to_str_tokens(REPEAT)
row = np.asarray(pattern)[0, head, -1]  # where the top induction head looks from the last token
print(f"pattern {pattern.shape}; L{layer}H{head} from the last {tokens[-1]!r}:",
      [(int(k), tokens[k], round(float(row[k]), 3)) for k in np.argsort(row)[::-1][:3]])

print("## Per-head outputs")
mat = model.encode(" mat")[0]


def p_mat(logits):
    return float(mx.softmax(logits[0, -1].astype(mx.float32))[mat])


with model.trace(REPEAT):
    for l, h, _ in top:
        model.layers[l].self_attn.heads[h].zero()
    ablated = model.output.save()
with model.trace(REPEAT):
    for l, h in low:
        model.layers[l].self_attn.heads[h].zero()
    control = model.output.save()
print(f"P(' mat') {p_mat(logits.value):.3f}; top-5 induction heads zeroed {p_mat(ablated.value):.3f}; "
      f"5 lowest-scoring heads zeroed {p_mat(control.value):.3f}")

print("## Residual logit lens")
lens = residual_logit_lens(model, "The Eiffel Tower is in the city of")
ids, probs = lens.top(1)
for layer in (10, 20, 24, 26, 28, 29):
    print(layer, repr(model.tokenizer.decode([int(ids[layer, -1, 0])])), round(float(probs[layer, -1, 0]), 3))
paris = model.encode(" Paris")[0]
ranks = (np.asarray(lens.logits[:, -1]) > np.asarray(lens.logits[:, -1, paris])[:, None]).sum(-1)
print("rank of ' Paris' at the last position by layer:", ranks.tolist())

print("## Head patching")
result = head_patching(model, CLEAN, CORRUPTED, metric=logit_difference(model, " Mary", " John"))
print(f"clean {result.clean_metric:.3f} corrupted {result.corrupted_metric:.3f}")
print("top heads by recovery:", [(l, h, round(r, 3)) for l, h, r in top_heads(result.recovery, 5)])
print("most negative:", [(l, h, round(-r, 3)) for l, h, r in top_heads(-result.recovery, 3)])
