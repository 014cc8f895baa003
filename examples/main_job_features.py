"""Three features of the main job's SAE: what they fire on, what they write, what they do.

    bash scripts/main.sh                       # trains runs/default/sae.mlx (layer 15, 9,216 latents)
    python examples/main_job_features.py       # ~2 minutes on a 2-core CPU

The findings are written up in docs/features.md ("Three features of the main job's SAE").
"""

import argparse
import os
import re

os.environ.setdefault("MLXTERP_AUTO_BLAS", "1")  # re-executes with OpenBLAS on Linux

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
# before Shakespeare's own "... than" and see what happens to P(" than"); a feature that is not
# active there (95) is the control.
than = model.encode(" than")[0]
corpus = "\n\n".join(texts)
contexts = [corpus[max(0, m.start() - 150):m.end(1)]
            for m in re.finditer(r"\b(more|better|worse|rather|less|greater|\w+er) than\b", corpus)]
contexts = contexts[:: max(1, len(contexts) // 40)][:40]


def log_p_than(context, edit=None):
    with model.trace(context):
        if edit:
            edit()
        acts = model.layers[sae.metadata["layer"]].output.save()
        logits = model.output.save()
    code = float(sae.encode(acts.value)[0, -1, COMPARATIVE])
    return code, float(mx.log(mx.softmax(logits.value[0, -1].astype(mx.float32)))[than])


rows = np.array([
    (*log_p_than(c),
     log_p_than(c, lambda: splice_sae(sae, model, ablate(COMPARATIVE)))[1],
     log_p_than(c, lambda: splice_sae(sae, model, ablate(THOU)))[1])
    for c in contexts
])
active = rows[:, 0] > 0
print(f"feature {COMPARATIVE} is active before {active.sum()} of {len(rows)} \"... than\" contexts")
print(f"  mean log P(' than') change where active: ablating {COMPARATIVE}: "
      f"{(rows[active, 2] - rows[active, 1]).mean():+.3f} nats, ablating {THOU} (control): "
      f"{(rows[active, 3] - rows[active, 1]).mean():+.3f} nats")
print(f"  mean P(' than'): clean {np.exp(rows[active, 1]).mean():.3f}, "
      f"ablated {np.exp(rows[active, 2]).mean():.3f}\n")

for prompt in ["I think this plan is", "The king said to his son,"]:
    for feature in args.features:
        print(f"steering feature {feature} at strength 10")
        print(compare_generations(model, prompt, lambda: steer(sae, model, feature_idx=feature, strength=10.0),
                                  max_tokens=20), "\n")
