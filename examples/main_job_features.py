"""Three features of the main job's SAE: what they fire on, what they write, what they do.

    bash scripts/main.sh                       # trains runs/default/sae.mlx (layer 15, 9,216 latents)
    python examples/main_job_features.py       # ~4 minutes on a 2-core CPU

The findings are written up in docs/features.md ("Three features of the main job's SAE").
"""

import argparse
import re

from mlxterp.platform import use_fast_blas  # noqa: E402

use_fast_blas()  # on Linux, re-executes with OpenBLAS preloaded

import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402

from mlxterp import InterpretableModel  # noqa: E402
from mlxterp.data import default_corpus  # noqa: E402
from mlxterp.features import (  # noqa: E402
    ablate, compare_generations, logit_lens, random_baseline, splice_sae, steer,
    top_activating_examples,
)

COMPARATIVE, UN_PREFIX, THOU = 374, 350, 95

parser = argparse.ArgumentParser()
parser.add_argument("--sae", default="runs/default/sae.mlx")
parser.add_argument("--features", type=int, nargs="+", default=[COMPARATIVE, UN_PREFIX, THOU])
args = parser.parse_args()

model = InterpretableModel.default()
sae = model.load_sae(args.sae)
texts = default_corpus()

found = top_activating_examples(sae, model, texts, feature_indices=args.features, top_k=8,
                                n_tokens=50_000, window=(8, 3), progress=True)
for feature in args.features:
    print(found[feature])
    print(logit_lens(sae, feature, model, k=8), "\n")
print(random_baseline(sae, model, n=100), "\n")

# Causal check of the comparative feature's logit lens (it promotes " than"): ablate it just
# before Shakespeare's own "... than" and see what happens to P(" than") and to the greedy next
# token; a feature that is not active there (95) is the control.
than = model.encode(" than")[0]
corpus = "\n\n".join(texts)
contexts = [corpus[max(0, m.start() - 150):m.end(1)]
            for m in re.finditer(r"\b(more|better|worse|rather|less|greater|\w+er) than\b", corpus)]
contexts = contexts[:: max(1, len(contexts) // 120)][:120]


def next_token(context, edit=None):
    """(code of the comparative feature, log P(" than"), greedy next token) at the end of `context`."""
    with model.trace(context):
        if edit:
            edit()
        acts = model.layers[sae.metadata["layer"]].output.save()
        logits = model.output.save()
    last = logits.value[0, -1].astype(mx.float32)
    code = float(sae.encode(acts.value)[0, -1, COMPARATIVE])
    return code, float(mx.log(mx.softmax(last))[than]), int(mx.argmax(last))


clean = [next_token(c) for c in contexts]
ablated = [next_token(c, lambda: splice_sae(sae, model, ablate(COMPARATIVE))) for c in contexts]
control = [next_token(c, lambda: splice_sae(sae, model, ablate(THOU))) for c in contexts]
active = np.array([code > 0 for code, _, _ in clean])
change = np.array([a[1] - c[1] for a, c in zip(ablated, clean)])
control_change = np.array([a[1] - c[1] for a, c in zip(control, clean)])
print(f"feature {COMPARATIVE} is active before {active.sum()} of {len(contexts)} \"... than\" contexts")
print(f"  mean log P(' than') change where active: ablating {COMPARATIVE}: {change[active].mean():+.3f} "
      f"nats, ablating {THOU} (control): {control_change[active].mean():+.3f} nats")
flips = [(context, c[2], a[2]) for context, c, a in zip(contexts, clean, ablated) if c[2] != a[2]]
print(f"  greedy next token changed by the ablation in {len(flips)} contexts:")
for context, before, after in flips:
    print(f"    {context[-40:]!r}: {model.decode([before])!r} -> {model.decode([after])!r}")
away = [f for f in flips if f[1] == than]
if away:
    print(compare_generations(model, away[0][0], lambda: splice_sae(sae, model, ablate(COMPARATIVE)),
                              max_tokens=12), "\n")

for prompt in ["I think this plan is", "The king said to his son,"]:
    for feature in args.features:
        print(f"steering feature {feature} at strength 10")
        print(compare_generations(model, prompt, lambda: steer(sae, model, feature_idx=feature, strength=10.0),
                                  max_tokens=20), "\n")
