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

print("top previous-token heads:", [(l, h, round(s, 3)) for l, h, s in top_heads(scores.previous_token, 4)])
tokens = mx.array(scores.tokens)
half = scores.seq_len


def losses(heads):
    """Mean next-token loss over the first and over the second copy, with `heads` zeroed."""
    with model.trace(tokens):
        for l, h in heads:
            model.layers[l].self_attn.heads[h].zero()
        logits = model.output.save()
    logp = logits.value[:, :-1].astype(mx.float32)
    nll = -(mx.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0] - mx.logsumexp(logp, axis=-1))
    return round(float(nll[:, 1:half].mean()), 3), round(float(nll[:, -half + 1:].mean()), 3)


n_heads = scores.scores.shape[1]
top_pairs = [(l, h) for l, h, _ in top]
others = [(i // n_heads, i % n_heads) for i in range(scores.scores.size) if (i // n_heads, i % n_heads) not in top_pairs]
random = [others[i] for i in np.random.default_rng(0).choice(len(others), 5, replace=False)]
previous = [(l, h) for l, h, _ in top_heads(scores.previous_token, 5)]
print("loss (first copy, second copy): none zeroed", losses([]), "| top-5 induction heads", losses(top_pairs),
      "| 5 random heads", random, losses(random), "| top-5 previous-token heads", previous, losses(previous))

print("## Attention patterns")
REPEAT = "The cat sat on the mat. The cat sat on the"
(layer, head, _) = top[0]
with model.trace(REPEAT) as trace:
    pattern = model.module(model.hook_point(layer, "attn").path).pattern.save()
str_tokens = model.to_str_tokens(REPEAT)
row = np.asarray(pattern)[0, head, -1]  # where the top induction head looks from the last token
print(f"pattern {pattern.shape}; L{layer}H{head} from the last {str_tokens[-1]!r}:",
      [(int(k), str_tokens[k], round(float(row[k]), 3)) for k in np.argsort(row)[::-1][:3]])

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
(layer, head, _) = top_heads(result.recovery, 1)[0]
mary, john = model.encode(" Mary")[0], model.encode(" John")[0]
with model.trace(CLEAN):
    model.layers[layer].self_attn.heads[head].zero()
    ablated = model.output.save()
print(f"clean logit diff with L{layer}H{head} zeroed: {float(ablated.value[0, -1, mary] - ablated.value[0, -1, john]):.3f}")
