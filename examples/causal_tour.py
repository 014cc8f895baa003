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

print("## Attention patterns")
with model.trace(CLEAN) as trace:
    pattern = model.layers[18].self_attn.pattern.save()
    heads = model.layers[18].self_attn.heads.save()
    logits = model.output.save()
tokens = model.to_str_tokens(CLEAN)
print("pattern", pattern.shape, "heads", heads.shape)
last = np.asarray(pattern)[0, :, -1]  # (heads, keys): where the last token looks
for head in (6, 7):
    order = np.argsort(last[head])[::-1][:3]
    print(f"L18H{head} from {tokens[-1]!r}:", [(tokens[k], round(float(last[head, k]), 3)) for k in order])

print("## Per-head outputs")
mary, john = model.encode(" Mary")[0], model.encode(" John")[0]
base = float(logits.value[0, -1, mary] - logits.value[0, -1, john])
with model.trace(CLEAN):
    model.layers[18].self_attn.heads[6].zero()
    ablated = model.output.save()
print(f"logit diff Mary-John {base:.3f}; with L18H6 zeroed {float(ablated.value[0, -1, mary] - ablated.value[0, -1, john]):.3f}")

print("## Head patching")
result = head_patching(model, CLEAN, CORRUPTED, metric=logit_difference(model, " Mary", " John"))
print(f"clean {result.clean_metric:.3f} corrupted {result.corrupted_metric:.3f}")
print("top heads by recovery:", [(l, h, round(r, 3)) for l, h, r in top_heads(result.recovery, 5)])
print("most negative:", [(l, h, round(-r, 3)) for l, h, r in top_heads(-result.recovery, 3)])

print("## Residual logit lens")
lens = residual_logit_lens(model, "The Eiffel Tower is in the city of")
ids, probs = lens.top(1)
for layer in (10, 20, 24, 26, 28, 29):
    print(layer, repr(model.tokenizer.decode([int(ids[layer, -1, 0])])), round(float(probs[layer, -1, 0]), 3))
paris = model.encode(" Paris")[0]
ranks = (np.asarray(lens.logits[:, -1]) > np.asarray(lens.logits[:, -1, paris])[:, None]).sum(-1)
print("rank of ' Paris' at the last position by layer:", ranks.tolist())

print("## Induction heads")
scores = induction_scores(model)
print("top:", [(l, h, round(s, 3)) for l, h, s in scores.top(6)])
print("per-layer max:", np.round(scores.scores.max(1), 2).tolist())
