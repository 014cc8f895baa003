"""Benchmark: a transcoder, a skip transcoder and an SAE of the same width on the MLP output of one
middle layer of SmolLM2, trained together from one forward per batch (`model.train_saes`), then
evaluated on held-out WikiText-2: FVU of the MLP output and CE loss recovered when each replaces
the MLP's output (zero ablation of the MLP output as the baseline).

All three: TopK, k 32, 16x expansion (9,216 latents), the same `--tokens` training tokens per
epoch (WikiText-2 test, ../shared/data, even articles; odd articles held out), `--epochs` epochs
over the activation cache.

    python benchmarks/transcoder_smollm2.py [--layer 15] [--tokens 8192] [--epochs 3] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from mlxterp.platform import use_fast_blas  # noqa: E402

use_fast_blas()  # on Linux, re-executes with OpenBLAS preloaded

from mlxterp import InterpretableModel, evaluate_sae  # noqa: E402
from mlxterp.sae.config import SAEConfig  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from multi_layer import first_chars, write_json  # noqa: E402
from sae_smollm2 import WIKITEXT, wikitext_articles  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layer", type=int, default=15)
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--eval-tokens", type=int, default=4096)
    parser.add_argument("--ce-contexts", type=int, default=4)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    model = InterpretableModel.default()
    articles = wikitext_articles(WIKITEXT)
    train_texts = first_chars(articles[0::2], 8 * args.tokens)
    eval_texts = first_chars(articles[1::2], 8 * args.eval_tokens + 8 * 256 * args.ce_contexts)
    config = SAEConfig(k=32, expansion_factor=16, batch_size=args.batch_size, num_epochs=args.epochs,
                       validation_split=0.0, checkpoint_every=None)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as cache:
        saes = model.train_saes(f"layers.{args.layer}.mlp", train_texts, config, transcoders=[args.layer],
                                skip_transcoders=[args.layer], cache_dir=cache, max_tokens=args.tokens)
    train_s = time.perf_counter() - start
    results = {"layer": args.layer, "tokens_per_epoch": args.tokens, "epochs": args.epochs, "k": 32,
               "d_hidden": 16 * model.d_model, "train_s_all_three": train_s, "saes": {}}
    for name, sae in saes.items():
        m = evaluate_sae(sae, model, eval_texts, n_tokens=args.eval_tokens, n_ce_contexts=args.ce_contexts)
        results["saes"][name] = {key: m[key] for key in ("fvu", "l0", "dead_fraction", "ce_loss_clean",
                                                         "ce_loss_with_sae", "ce_loss_zero_ablation",
                                                         "ce_loss_recovered", "n_tokens", "n_ce_tokens")}
        print(f"{name:28s} FVU {m['fvu']:.3f}  L0 {m['l0']:.1f}  dead {m['dead_fraction']:.3f}  CE clean "
              f"{m['ce_loss_clean']:.3f} spliced {m['ce_loss_with_sae']:.3f} zero-ablated "
              f"{m['ce_loss_zero_ablation']:.3f}  CE recovered {m['ce_loss_recovered']:.3f}", flush=True)
    write_json(args.out, "transcoder_smollm2.json", results)


if __name__ == "__main__":
    main()
