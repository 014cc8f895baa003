"""Benchmark: a TopK SAE on real SmolLM2 activations, its quality and its training speed.

Trains on the residual stream of a middle layer of SmolLM2-135M (default layer 15) over
WikiText-2 (test split, from ../shared/data), 16x expansion, k=32, for at least 1M training
tokens (several epochs over cached activations), with every second article held out. Prints:
explained variance, FVU, L0 (all over tokens below the SAE's norm limit), the fraction of
latents that never fire on the held-out tokens (at least 100k), CE loss recovered with the
SAE spliced in, and the SAE training throughput (tokens/s on cached activations) beside a plain
float32 matmul of the encoder's size measured in the same run.

Beside it, in the same run and on the same cached activations and token budget, EleutherAI
sparsify's SparseCoder (same d_hidden and k, its default optimizer and LR rule) trained by
benchmarks/sparsify_train.py in .bench-venv (a subprocess reading the training activations that
this script writes to disk), then loaded into an mlxterp `SAE` (W_enc, b_enc, W_dec, b_dec; no
input normalization; sparsify encodes topk(relu((x - b_dec) @ W_enc.T + b_enc)), as mlxterp does)
and scored by the same held-out evaluation. `--mlxterp NAME=JSON` adds mlxterp SAEs trained with
SAEConfig overrides (e.g. the previous defaults) to the comparison.

    python benchmarks/sae_smollm2.py [--layer 15] [--min-train-tokens 1000000] [--out benchmarks/results]
        [--mlxterp 'old={"min_lr_ratio": 0.1}'] [--no-sparsify] [--no-default]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from mlxterp.platform import use_fast_blas  # noqa: E402

use_fast_blas()  # on Linux, re-executes with OpenBLAS preloaded

import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402

from mlxterp import InterpretableModel  # noqa: E402
from mlxterp.io_utils import atomic_write_text  # noqa: E402
from mlxterp.sae.config import SAEConfig  # noqa: E402
from mlxterp.features.evaluate import downstream_metrics  # noqa: E402
from mlxterp.sae.metrics import evaluate_reconstruction  # noqa: E402
from mlxterp.sae.model import SAE  # noqa: E402
from mlxterp.activations import ActivationStore, norm_limit, within_limit  # noqa: E402
from mlxterp.sae.train import SAETrainer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WIKITEXT = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "wikitext-2-raw-test.txt"
CE_KEYS = ("ce_loss_clean", "ce_loss_with_sae", "ce_loss_zero_ablation", "ce_loss_recovered", "kl_div_with_sae")
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
    parser.add_argument("--mlxterp", action="append", default=[], metavar="NAME=JSON",
                        help="also train an mlxterp SAE with these SAEConfig overrides (repeatable)")
    parser.add_argument("--cache-dir", default=None, help="activation cache (default: <out>/activation_cache)")
    parser.add_argument("--train-tokens", type=int, default=None,
                        help="cap the training tokens (default: every token of the training articles)")
    parser.add_argument("--heldout-tokens", type=int, default=None,
                        help="cap the held-out tokens (default: every token of the held-out articles)")
    parser.add_argument("--no-default", action="store_true", help="skip the mlxterp SAE with the defaults")
    parser.add_argument("--no-sparsify", action="store_true", help="skip sparsify (runs when .bench-venv exists)")
    parser.add_argument("--sparsify-python", default=str(ROOT / ".bench-venv" / "bin" / "python"))
    parser.add_argument("--sparsify-optimizer", choices=("signum", "adam"), default="signum")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = [] if args.no_default else [("mlxterp:default", {})]
    for spec in args.mlxterp:
        name, _, overrides = spec.partition("=")
        runs.append((f"mlxterp:{name}", json.loads(overrides or "{}")))
    if not args.no_sparsify:
        if not Path(args.sparsify_python).exists():
            raise SystemExit(f"{args.sparsify_python} not found: create .bench-venv (benchmarks/README.md) "
                             "or pass --no-sparsify")
        runs.append(("sparsify", None))

    model = InterpretableModel.default()
    articles = wikitext_articles(WIKITEXT)
    val_texts = articles[:: args.heldout_every]
    train_texts = [a for i, a in enumerate(articles) if i % args.heldout_every]
    config = SAEConfig(expansion_factor=args.expansion_factor, k=args.k, validation_split=0.0)

    # 1. Activations, cached on disk (the model runs once over the training text).
    start = time.perf_counter()
    cache_dir = Path(args.cache_dir) if args.cache_dir else out / "activation_cache"
    hook = model.hook_point(args.layer, "output")
    store = ActivationStore(model, train_texts, hook, config.contexts, cache_dir=cache_dir, seed=config.seed,
                            max_tokens=args.train_tokens)
    every = np.concatenate(list(store.chunks()))
    # As train_sae does (there from a sample): tokens above max_norm_ratio x the median norm, the
    # attention sinks, are left out.
    limit = norm_limit(every, config.max_norm_ratio)
    train_np = every[np.array(within_limit(every, limit))]
    train_acts = mx.array(train_np)
    mx.eval(train_acts)
    collect_s = time.perf_counter() - start
    epochs = -(-args.min_train_tokens // len(train_acts))
    print(f"{len(articles)} articles: {len(train_texts)} train ({len(train_acts):,} tokens), "
          f"{len(val_texts)} held out; activations collected/loaded in {collect_s:.0f}s")
    # Held-out activations, cached too (as evaluate_sae collects them: every token, seed 1234),
    # so that every SAE is scored on the same array.
    held_store = ActivationStore(model, val_texts, hook, config.contexts, cache_dir=cache_dir, seed=1234,
                                 name="eval", max_token_norm=limit, max_tokens=args.heldout_tokens)
    held = np.concatenate(list(held_store.chunks()))
    d = model.d_model
    meta = {"model_name": model.name, "model_fingerprint": model.fingerprint, "hook_point": hook.to_dict(),
            **config.contexts.to_dict(), "max_token_norm": limit}

    def evaluate(sae: SAE) -> dict:
        metrics = evaluate_reconstruction(sae, (held[i:i + 4096] for i in range(0, len(held), 4096)))
        n = min(args.ce_contexts, len(held_store.contexts))
        if n == 0:  # --ce-contexts 0: reconstruction figures only
            return {**metrics, **{key: float("nan") for key in CE_KEYS}}
        metrics.update(downstream_metrics(sae, model, held_store.contexts[:n], held_store.keep[:n],
                                          hook, config.drop_first_tokens))
        return metrics

    # 2. Train each SAE on the same activations and token budget, then score it.
    results = {}
    plain = None
    for name, overrides in runs:
        start = time.perf_counter()
        if name == "sparsify":
            sae, info = train_sparsify(args, out, train_np, epochs, d, meta)
        else:
            config = SAEConfig(**{**dict(expansion_factor=args.expansion_factor, k=args.k, validation_split=0.0,
                                         num_epochs=epochs, checkpoint_every=None), **overrides})
            sae = SAE.from_config(d, config)
            sae.metadata.update(meta)
            trainer = SAETrainer(sae, config)
            t0 = time.perf_counter()
            trainer.fit(train_acts)
            train_s = time.perf_counter() - t0
            trained_tokens = trainer.step * config.batch_size
            info = {"overrides": overrides, "config": config.to_dict(), "trained_tokens": trained_tokens,
                    "sae_train_seconds": train_s, "sae_train_tokens_per_s": trained_tokens / train_s,
                    "learning_rate": trainer.peak_lr, "final_train_fvu": trainer.history[-1]["fvu"]}
            if name == "mlxterp:default":
                sae.save(out / "sae_smollm2.mlx")
                if plain is None:
                    plain = matmul_gflops(config.batch_size, d, sae.d_hidden)
                info["encoder_matmul_gflops_achieved"] = info["sae_train_tokens_per_s"] * 2 * d * sae.d_hidden / 1e9
                info["plain_matmul_gflops"] = plain
        metrics = evaluate(sae)
        results[name] = {**info, **{f"heldout_{k}": v for k, v in metrics.items()}}
        print(f"{name}: held-out FVU {metrics['fvu']:.4f} (EV {metrics['explained_variance']:.3f}), "
              f"never firing {100 * metrics['dead_fraction']:.2f}%, dense {100 * metrics['dense_fraction']:.2f}%, "
              f"CE recovered {metrics['ce_loss_recovered']:.3f} ({time.perf_counter() - start:.0f}s)", flush=True)

    report = {
        "model": model.name, "layer": args.layer, "component": "output (residual stream)",
        "d_model": d, "d_hidden": d * args.expansion_factor, "k": args.k,
        "train_tokens_per_epoch": len(train_acts), "epochs": epochs,
        "heldout_tokens": len(held), "activation_collection_seconds": collect_s, "saes": results,
    }
    atomic_write_text(out / "sae_smollm2.json", json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    print(f"\nheld-out tokens: {len(held):,}; training tokens per SAE: {epochs} epochs x {len(train_acts):,}")
    print("| SAE | held-out FVU | EV | L0 | never firing | dense (>10%) | CE clean / with SAE / zero-abl. | CE recovered | KL |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, r in results.items():
        print(f"| {name} | {r['heldout_fvu']:.4f} | {r['heldout_explained_variance']:.3f} | {r['heldout_l0']:.1f} | "
              f"{100 * r['heldout_dead_fraction']:.2f}% | {100 * r['heldout_dense_fraction']:.2f}% | "
              f"{r['heldout_ce_loss_clean']:.3f} / {r['heldout_ce_loss_with_sae']:.3f} / "
              f"{r['heldout_ce_loss_zero_ablation']:.3f} | {r['heldout_ce_loss_recovered']:.3f} | "
              f"{r['heldout_kl_div_with_sae']:.3f} |")
    for name, r in results.items():
        if "sae_train_tokens_per_s" in r:
            print(f"{name}: trained {r['trained_tokens']:,} tokens in {r['sae_train_seconds']:.0f}s "
                  f"({r['sae_train_tokens_per_s']:,.0f} tokens/s)")
    if "mlxterp:default" in results:
        r = results["mlxterp:default"]
        print(f"mlxterp:default encoder matmul {r['encoder_matmul_gflops_achieved']:.0f} GFLOP/s vs "
              f"{r['plain_matmul_gflops']:.0f} GFLOP/s for a plain matmul of its size")


def train_sparsify(args, out: Path, train_np: np.ndarray, epochs: int, d: int, meta: dict) -> tuple[SAE, dict]:
    """Train sparsify on `train_np` in .bench-venv; return its weights as an mlxterp SAE, and its run info."""
    work = out / "sparsify"
    work.mkdir(parents=True, exist_ok=True)
    np.save(work / "train.npy", np.ascontiguousarray(train_np, dtype=np.float32))
    cmd = [args.sparsify_python, str(ROOT / "benchmarks" / "sparsify_train.py"), "--train", str(work / "train.npy"),
           "--out", str(work / "sae.npz"), "--expansion-factor", str(args.expansion_factor), "--k", str(args.k),
           "--epochs", str(epochs), "--batch-size", "4096", "--optimizer", args.sparsify_optimizer]
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MLXTERP_BLAS_REEXEC")}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"sparsify training failed (exit {proc.returncode})")
    print(proc.stdout.strip().splitlines()[-1])
    w = np.load(work / "sae.npz")
    sae = SAE(d, int(w["W_enc"].shape[0]), k=args.k, architecture="topk", normalization="none")
    sae.W_enc = mx.array(w["W_enc"])
    sae.b_enc = mx.array(w["b_enc"])
    sae["W_dec"] = mx.array(w["W_dec"])
    sae.b_dec = mx.array(w["b_dec"])
    sae.metadata.update(meta)
    steps = int(w["steps"])
    info = {"optimizer": args.sparsify_optimizer, "learning_rate": float(w["lr"]), "trained_tokens": steps * 4096,
            "sae_train_seconds": float(w["seconds"]), "sae_train_tokens_per_s": steps * 4096 / float(w["seconds"]),
            "final_train_fvu": None, "mean_train_fvu": float(w["mean_train_fvu"])}
    (work / "train.npy").unlink()
    return sae, info


if __name__ == "__main__":
    main()
