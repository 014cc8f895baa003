"""Look at and edit activations of the embedded default model (offline).

    python examples/trace_and_edit.py
"""


from mlxterp.platform import use_fast_blas  # noqa: E402

use_fast_blas()  # on Linux, re-executes with OpenBLAS preloaded

import mlx.core as mx  # noqa: E402

from mlxterp import InterpretableModel  # noqa: E402
from mlxterp.patching import activation_patching, logit_difference  # noqa: E402

model = InterpretableModel.default()
print(model)

# 1. Capture: with nothing asked, every block's output, MLP and attention output is kept.
with model.trace("The capital of France is") as trace:
    pass
resid = trace.activations["model.layers.15"]
print("layer 15 residual stream:", resid.shape)
print("per-token norms:", [round(float(n)) for n in mx.linalg.norm(resid[0], axis=-1)])
print("(the first position is the attention sink: its norm dwarfs the others)")

# 2. Logit lens: what each layer's residual stream predicts for the next token.
prompt = "The capital of France is"
with model.trace(prompt) as trace:
    saved = [model.layers[i].output.save() for i in range(0, model.n_layers, 5)]
for i, s in zip(range(0, model.n_layers, 5), saved):
    top = int(mx.argmax(model.unembed(s.value[0, -1])).item())
    print(f"layer {i:2d} predicts {model.decode([top])!r}")

# 3. Edit: ablate the MLPs of layers 10-20 and compare the next-token prediction.
with model.trace(prompt):
    clean = model.output.save()
with model.trace(prompt):
    for i in range(10, 21):
        model.layers[i].mlp.output.zero()
    ablated = model.output.save()
for name, logits in (("clean", clean), ("MLPs 10-20 ablated", ablated)):
    print(f"{name:20s} ->", repr(model.decode([int(mx.argmax(logits.value[0, -1]).item())])))

# 4. Generate with a steering vector: the difference of two prompts' residual streams.
with model.trace(["I love this, it is wonderful", "I hate this, it is terrible"]) as trace:
    pass
acts = trace.activations["model.layers.12"]
direction = acts[0, 1:].mean(0) - acts[1, 1:].mean(0)
print("unsteered:", model.generate("My day was", max_tokens=15).text)
with model.generate("My day was", max_tokens=15) as gen:
    model.layers[12].output.add(-2.0 * direction, positions=slice(1, None))
print("steered toward 'hate':", gen.text)

# 5. Activation patching at the last position: from which layer on does it carry the answer?
result = activation_patching(
    model,
    clean="The Eiffel Tower is in the city of",
    corrupted="The Colosseum is in the city of",
    metric=logit_difference(model, " Paris", " Rome"),
    per_position=True,
)
print("recovery at the last position, by layer:", [round(float(r), 2) for r in result.recovery[:, -1]])
