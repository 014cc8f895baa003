"""Benchmark: JumpReLU and Matryoshka BatchTopK next to TopK (and BatchTopK) at equal L0.

Runs the two existing benchmarks with one SAE per architecture, all at the same k (TopK keeps k
latents per token, BatchTopK and Matryoshka k on average over a batch, JumpReLU trains its
thresholds toward an L0 of k):

1. benchmarks/synthetic_dictionary.py on known sparse dictionaries: held-out FVU, L0, dead
   fraction and dictionary recovery (mmcs);
2. benchmarks/sae_smollm2.py on SmolLM2-135M layer 15 (residual stream), cached activations of
   WikiText-2: held-out FVU, L0, the fraction of latents that never fire on the held-out tokens
   (and CE loss recovered with --ce-contexts N).

    python benchmarks/sae_architectures.py                        # both, the budgets below
    python benchmarks/sae_architectures.py --skip-smollm2 --epochs 64
    python benchmarks/sae_architectures.py --skip-synthetic --train-tokens 0 --min-train-tokens 1000000

The defaults are small budgets for a shared 2-core CPU (12,288 training tokens, 4x expansion,
batches of 1,024 tokens so that 200k tokens are ~200 steps; see benchmarks/README.md for what
they gave); `--train-tokens 0 --expansion-factor 16 --batch-size 4096 --min-train-tokens 1000000`
is the budget of sae_smollm2.py's own figures.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARCHITECTURES = {
    "topk": {},
    "batchtopk": {"architecture": "batchtopk"},
    "matryoshka": {"architecture": "matryoshka_batchtopk"},
    "jumprelu": {"architecture": "jumprelu"},  # last: a missed L0 target stops the run with an error
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="*", default=["d64-m256-uniform", "d64-m256-powerlaw-offset"])
    parser.add_argument("--epochs", type=int, default=16, help="synthetic: epochs of 65,536 samples")
    parser.add_argument("--train-tokens", type=int, default=12288, help="SmolLM2: training tokens captured")
    parser.add_argument("--heldout-tokens", type=int, default=4096)
    parser.add_argument("--min-train-tokens", type=int, default=200_000, help="SmolLM2: tokens each SAE trains on")
    parser.add_argument("--ce-contexts", type=int, default=0)
    parser.add_argument("--expansion-factor", type=int, default=4, help="SmolLM2: latents per dimension")
    parser.add_argument("--batch-size", type=int, default=1024, help="SmolLM2: tokens per step")
    parser.add_argument("--skip-synthetic", action="store_true")
    parser.add_argument("--skip-smollm2", action="store_true")
    parser.add_argument("--out", default="benchmarks/results/sae_architectures")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.skip_synthetic:
        variants = ["default" if name == "topk" else name for name in ARCHITECTURES]
        run([ROOT / "benchmarks" / "synthetic_dictionary.py", "--cases", *args.cases, "--epochs", str(args.epochs),
             "--no-plain", "--no-plain-bc", "--variants", *variants, "--out", str(out / "synthetic.json")])
    if not args.skip_smollm2:
        cmd = [ROOT / "benchmarks" / "sae_smollm2.py", "--no-default", "--no-sparsify", "--out", str(out / "smollm2"),
               "--heldout-tokens", str(args.heldout_tokens), "--min-train-tokens", str(args.min_train_tokens),
               "--ce-contexts", str(args.ce_contexts), "--expansion-factor", str(args.expansion_factor)]
        if args.train_tokens:
            cmd += ["--train-tokens", str(args.train_tokens)]
        for name, overrides in ARCHITECTURES.items():
            cmd += ["--mlxterp", f"{name}={json.dumps({**overrides, 'batch_size': args.batch_size})}"]
        run(cmd)


def run(cmd: list) -> None:
    print("$", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([sys.executable, *map(str, cmd)], check=True)


if __name__ == "__main__":
    main()
