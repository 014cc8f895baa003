"""Seed 003's quickstart, offline: train an SAE on the default model, save, load, encode, steer.

    python examples/sae_quickstart.py [--layer 10] [--max-tokens 60000]

Runs in a few minutes on a 2-core CPU (SmolLM2-135M + the bundled corpus); on a Mac, pass a
bigger model id (e.g. mlx-community/Llama-3.2-1B-Instruct) with --model.
"""

import argparse

from mlxterp.platform import use_fast_blas  # noqa: E402

use_fast_blas()  # on Linux, re-executes with OpenBLAS preloaded

import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402

from mlxterp import InterpretableModel, SAEConfig  # noqa: E402
from mlxterp.data import default_corpus  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--model", default="default")
parser.add_argument("--layer", type=int, default=10)
parser.add_argument("--max-tokens", type=int, default=60_000, help="training tokens per epoch")
parser.add_argument("--out", default="my_sae.mlx")
args = parser.parse_args()

# Load model
model = InterpretableModel(args.model)
texts = default_corpus()  # 492 documents of public-domain Shakespeare; any list of strings works

# Train SAE (seed 003: model.train_sae(layer=..., dataset=..., save_path=...))
config = SAEConfig(expansion_factor=8, k=32, num_epochs=2)
sae = model.train_sae(layer=args.layer, dataset=texts, component="mlp", config=config,
                      save_path=args.out, max_tokens=args.max_tokens)

# Load saved SAE and check compatibility
sae = model.load_sae(args.out)
if sae.is_compatible(model, layer=args.layer, component="mlp"):
    print("✓ SAE is compatible!")

# Encode activations to features
with model.trace("Test input") as trace:
    pass
activation = trace.activations[f"model.layers.{args.layer}.mlp"]
features = sae.encode(activation)  # sparse features
reconstructed = sae.decode(features)  # reconstructed activation
num_active = int(mx.sum(features[0, -1] != 0))
print(f"Active features on the last token: {num_active}/{sae.d_hidden}")
active_indices = np.flatnonzero(np.array(features[0, -1]))  # MLX's mx.where needs 3 arguments
print(f"Active feature IDs: {active_indices.tolist()}")
print("Validation metrics:", {k: round(v, 3) for k, v in sae.metadata["training"]["final_metrics"].items()
                             if k.startswith("val/")})

# Phase 2: what fires, where, and steering
print(sae.analyze_text(model, prompt="Artificial intelligence is transforming society", top_k=5))
top = sae.analyze_text(model, prompt="My lord, the king is dead", top_k=1)
feature = top.top[0][0]
examples = sae.get_top_activating_texts(feature_idx=feature, dataset=texts[:60], top_k=3)
print(f"feature {feature} fires most on:")
for example in examples:
    print("  ", example)

with model.generate("The weather today", max_tokens=20) as gen:
    sae.steer(model=model, layer=args.layer, feature_idx=feature, strength=4.0)
print("steered:", gen.text)
print("plain:  ", model.generate("The weather today", max_tokens=20).text)
