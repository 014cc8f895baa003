"""Seed 003's W&B example: train an SAE and log train/* and val/* metrics to Weights & Biases.

    python examples/sae_with_wandb.py [--layer 15] [--max-tokens 60000]

Needs `pip install "mlxterp[wandb]"`. Without a W&B login (no WANDB_API_KEY and WANDB_MODE
unset) the run is logged offline under ./wandb; upload it later with `wandb sync wandb/offline-run-*`.
"""

import argparse
import os

from mlxterp.platform import use_fast_blas  # noqa: E402

use_fast_blas()  # on Linux, re-executes with OpenBLAS preloaded

from mlxterp import InterpretableModel, SAEConfig  # noqa: E402
from mlxterp.data import default_corpus  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--model", default="default")
parser.add_argument("--layer", type=int, default=15)
parser.add_argument("--max-tokens", type=int, default=60_000, help="training tokens per epoch")
args = parser.parse_args()

if "WANDB_API_KEY" not in os.environ and "WANDB_MODE" not in os.environ:
    print("no W&B login found: logging offline to ./wandb")
    os.environ["WANDB_MODE"] = "offline"

config = SAEConfig(
    expansion_factor=16,
    k=32,
    num_epochs=3,
    # Enable W&B logging
    use_wandb=True,
    wandb_project="my-sae-experiments",
    wandb_name=f"sae_layer{args.layer}_resid",
    wandb_tags=["sae", f"layer{args.layer}", "resid"],
)

model = InterpretableModel(args.model)
sae = model.train_sae(layer=args.layer, dataset=default_corpus(), component="output", config=config,
                      save_path="sae_wandb.mlx", max_tokens=args.max_tokens)
final = sae.metadata["training"]["final_metrics"]
print({name: round(value, 4) for name, value in final.items() if name.startswith("val/")})
