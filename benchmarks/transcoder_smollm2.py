"""Benchmark: a transcoder, a skip transcoder and an SAE of the same width on the MLP output of one
middle layer of SmolLM2, trained together from one forward per batch (`model.train_saes`), then
evaluated on held-out WikiText-2: FVU of the MLP output and CE loss recovered when each replaces
the MLP's output, against zero-ablating it.

All three: TopK, k 32, 16x expansion (9,216 latents), the same `--tokens` training tokens per
epoch (WikiText-2 test, ../shared/data, even articles; odd articles held out), `--epochs` epochs
over the activation cache. The evaluation shares what it can: one capture of the MLP's input and
output for the FVU of all three, and per context one clean and one zero-ablated forward beside
one spliced forward per SAE (the reconstruction alone, no error term; positions from 1 on).

    python benchmarks/transcoder_smollm2.py [--layer 15] [--tokens 3072] [--epochs 4] [--out benchmarks/results] [--cache-dir DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

from mlxterp.platform import use_fast_blas  # noqa: E402

use_fast_blas()  # on Linux, re-executes with OpenBLAS preloaded

import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402

from mlxterp import InterpretableModel, splice_sae  # noqa: E402
from mlxterp.activations import ActivationStore, within_limits  # noqa: E402
from mlxterp.sae.config import SAEConfig  # noqa: E402
from mlxterp.sae.metrics import evaluate_reconstruction  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from multi_layer import first_chars, write_json  # noqa: E402
from sae_smollm2 import WIKITEXT, wikitext_articles  # noqa: E402


def next_token_ce(logits: mx.array, tokens: mx.array, keep: np.ndarray) -> tuple[float, float]:
    """(summed CE of the kept next-token predictions, their count); position t predicts t+1."""
    logits = logits[:, :-1].astype(mx.float32)
    ce = mx.logsumexp(logits, axis=-1) - mx.take_along_axis(logits, tokens[:, 1:, None], axis=-1)[..., 0]
    weight = mx.array(keep[:, 1:].astype(np.float32))
    return float(mx.sum(ce * weight)), float(mx.sum(weight))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layer", type=int, default=15)
    parser.add_argument("--tokens", type=int, default=3072)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--eval-tokens", type=int, default=1024)
    parser.add_argument("--ce-contexts", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--cache-dir", default=None,
                        help="keep the training activations here (read back by a rerun); default: a temporary folder")
    args = parser.parse_args()
    model = InterpretableModel.default()
    articles = wikitext_articles(WIKITEXT)
    train_texts = first_chars(articles[0::2], 8 * args.tokens)
    eval_texts = first_chars(articles[1::2], 8 * args.eval_tokens)
    config = SAEConfig(k=32, expansion_factor=16, batch_size=args.batch_size, num_epochs=args.epochs,
                       validation_split=0.0, checkpoint_every=None)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() if args.cache_dir is None else contextlib.nullcontext(args.cache_dir) as cache:
        saes = model.train_saes(f"layers.{args.layer}.mlp", train_texts, config, transcoders=[args.layer],
                                skip_transcoders=[args.layer], cache_dir=cache, max_tokens=args.tokens,
                                save_dir=Path(args.out) / "transcoder_saes")
    train_s = time.perf_counter() - start
    print(f"trained all three in {train_s:.0f} s", flush=True)

    mlp_in, mlp = model.hook_point(args.layer, "mlp_in"), model.hook_point(args.layer, "mlp")
    store = ActivationStore(model, eval_texts, (mlp_in, mlp), config.contexts, max_tokens=args.eval_tokens,
                            seed=1234, name="eval")
    rows = np.concatenate(list(store.chunks()))
    d = model.d_model
    results = {"layer": args.layer, "tokens_per_epoch": args.tokens, "epochs": args.epochs, "k": 32,
               "d_hidden": 16 * d, "train_s_all_three": train_s, "eval_tokens": len(rows), "saes": {}}
    for name, sae in saes.items():
        meta = sae.metadata
        mine = rows if sae.transcode else rows[:, d:]
        limits = [meta["max_token_norm"]] + ([meta["max_target_norm"]] if sae.transcode else [])
        kept = mine[within_limits(mine, limits, d)]
        results["saes"][name] = evaluate_reconstruction(sae, [kept[i : i + 512] for i in range(0, len(kept), 512)])

    contexts = store.contexts[: args.ce_contexts]
    keep = store.keep[: args.ce_contexts]
    tokens = mx.array(contexts)
    totals = {}
    variants = {"clean": None, "zero_ablation": "zero", **{name: sae for name, sae in saes.items()}}
    for name, variant in variants.items():
        with model.trace(tokens, default_capture=False):
            if variant == "zero":
                model.layers[args.layer].mlp.output.edit(mx.zeros_like, positions=slice(1, None))
            elif variant is not None:
                splice_sae(variant, model, error_term=False)
            logits = model.output.save()
        totals[name] = next_token_ce(logits.value, tokens, keep)
    ce = {name: total / count for name, (total, count) in totals.items()}
    results.update(ce_loss_clean=ce["clean"], ce_loss_zero_ablation=ce["zero_ablation"], n_ce_tokens=totals["clean"][1])
    for name in saes:
        m = results["saes"][name]
        m["ce_loss_with_sae"] = ce[name]
        m["ce_loss_recovered"] = (ce["zero_ablation"] - ce[name]) / (ce["zero_ablation"] - ce["clean"])
        print(f"{name:28s} FVU {m['fvu']:.3f}  L0 {m['l0']:.1f}  dead {m['dead_fraction']:.3f}  CE clean "
              f"{ce['clean']:.3f} spliced {ce[name]:.3f} zero-ablated {ce['zero_ablation']:.3f}  "
              f"CE recovered {m['ce_loss_recovered']:.3f}", flush=True)
    write_json(args.out, "transcoder_smollm2.json", results)


if __name__ == "__main__":
    main()
