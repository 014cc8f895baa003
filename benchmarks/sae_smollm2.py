"""Benchmark: a TopK SAE on real SmolLM2 activations, its quality and its training speed.

Trains on the residual stream of a middle layer of SmolLM2-135M (default layer 15) over
WikiText-2 (test split, from ../shared/data), 16x expansion, k=32, for at least 1M training
tokens (several epochs over cached activations), with every second article held out. Prints:
explained variance, FVU, L0 (all over tokens below the SAE's norm limit), the fraction of
latents that never fire on the held-out tokens (at least 100k), CE loss recovered with the
SAE spliced in, and the SAE training throughput (tokens/s on cached activations) beside a plain
float32 matmul of the encoder's size measured in the same run.

    python benchmarks/sae_smollm2.py [--layer 15] [--min-train-tokens 1000000] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

from mlxterp.platform import use_fast_blas  # noqa: E402

use_fast_blas()  # on Linux, re-executes with OpenBLAS preloaded

import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402

from mlxterp import InterpretableModel  # noqa: E402
from mlxterp.io_utils import atomic_write_text  # noqa: E402
from mlxterp.sae.config import SAEConfig  # noqa: E402
from mlxterp.features import evaluate_sae  # noqa: E402
from mlxterp.sae.model import SAE  # noqa: E402
from mlxterp.activations import ActivationStore, norm_limit, within_limit  # noqa: E402
from mlxterp.sae.train import SAETrainer  # noqa: E402

WIKITEXT = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "wikitext-2-raw-test.txt"
ARTICLE_HEADING = re.compile(r"^ = [^=].* = $", re.M)


def wikitext_articles(path: Path) -> list[str]:
    """WikiText-2 split into whole articles (at top-level ` = Title = ` headings)."""
    text = path.read_text(encoding="utf-8")
    starts = [m.start() for m in ARTICLE_HEADING.finditer(text)] + [len(text)]
    return [text[a:b].strip() for a, b in zip(starts, starts[1:]) if text[a:b].strip()]


def matmul_gflops(n: int, d: int, m: int, repeats: int = 5) -> float:
    """GFLOP/s of a plain float32 (n, d) @ (d, m) matmul on this machine, best of `repeats`."""
    a, b = mx.random.normal((n, d)), mx.random.normal((d, m))
    mx.eval(a, b, a @ b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        mx.eval(a @ b)
        best = min(best, time.perf_counter() - start)
    return 2 * n * d * m / best / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layer", type=int, default=15)
    parser.add_argument("--expansion-factor", type=int, default=16)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--min-train-tokens", type=int, default=1_000_000)
    parser.add_argument("--ce-contexts", type=int, default=32)
    parser.add_argument("--heldout-every", type=int, default=2,
                        help="hold out every n-th article (2: half of WikiText-2 test, ~140k tokens)")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    model = InterpretableModel.default()
    articles = wikitext_articles(WIKITEXT)
    val_texts = articles[:: args.heldout_every]
    train_texts = [a for i, a in enumerate(articles) if i % args.heldout_every]
    config = SAEConfig(expansion_factor=args.expansion_factor, k=args.k, validation_split=0.0)

    # 1. Activations, cached on disk (the model runs once over the training text).
    start = time.perf_counter()
    store = ActivationStore(model, train_texts, model.hook_point(args.layer, "output"), config.contexts,
                            cache_dir=out / "activation_cache", seed=config.seed)
    every = np.concatenate(list(store.chunks()))
    # As train_sae does (there from a sample): tokens above max_norm_ratio x the median norm, the
    # attention sinks, are left out.
    limit = norm_limit(every, config.max_norm_ratio)
    train_acts = mx.array(every[np.array(within_limit(every, limit))])
    mx.eval(train_acts)
    collect_s = time.perf_counter() - start
    epochs = -(-args.min_train_tokens // len(train_acts))
    print(f"{len(articles)} articles: {len(train_texts)} train ({len(train_acts):,} tokens), "
          f"{len(val_texts)} held out; activations collected/loaded in {collect_s:.0f}s")

    # 2. Train: `epochs` passes over the cached activations, timed on their own.
    config = SAEConfig(expansion_factor=args.expansion_factor, k=args.k, validation_split=0.0,
                       num_epochs=epochs, checkpoint_every=None)
    sae = SAE.from_config(model.d_model, config)
    sae.metadata.update({"model_name": model.name, "layer": args.layer, "component": "output",
                         "context_length": config.context_length,
                         "drop_first_tokens": config.drop_first_tokens,
                         "max_token_norm": limit})
    trainer = SAETrainer(sae, config)
    start = time.perf_counter()
    trainer.fit(train_acts)
    train_s = time.perf_counter() - start
    trained_tokens = trainer.step * config.batch_size
    sae.save(out / "sae_smollm2.mlx")
    sae_rate = trained_tokens / train_s
    d, n_latents = model.d_model, sae.d_hidden
    plain = matmul_gflops(config.batch_size, d, n_latents)
    encoder_gflops = sae_rate * 2 * d * n_latents / 1e9

    # 3. Evaluate on the held-out articles (every token of them for the firing statistics).
    metrics = evaluate_sae(sae, model, val_texts, n_tokens=10**9, n_ce_contexts=args.ce_contexts,
                           progress=True)
    report = {
        "model": model.name, "layer": args.layer, "component": "output (residual stream)",
        "d_model": d, "d_hidden": n_latents, "k": args.k,
        "train_tokens_per_epoch": len(train_acts), "epochs": epochs, "trained_tokens": trained_tokens,
        "sae_train_tokens_per_s": sae_rate, "sae_train_seconds": train_s,
        "encoder_matmul_gflops_achieved": encoder_gflops, "plain_matmul_gflops": plain,
        "activation_collection_seconds": collect_s,
        **{f"heldout_{k}": v for k, v in metrics.items()},
    }
    atomic_write_text(out / "sae_smollm2.json", json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    print(f"\nheld-out tokens: {metrics['n_tokens']:,}; explained variance {metrics['explained_variance']:.3f}; "
          f"L0 {metrics['l0']:.1f}; never-firing latents {100 * metrics['dead_fraction']:.2f}%; "
          f"CE loss recovered {metrics['ce_loss_recovered']:.3f}")
    print(f"SAE training: {sae_rate:,.0f} tokens/s = {encoder_gflops:.0f} GFLOP/s of encoder matmul "
          f"vs {plain:.0f} GFLOP/s for a plain ({config.batch_size}x{d})@({d}x{n_latents}) matmul")


if __name__ == "__main__":
    main()
