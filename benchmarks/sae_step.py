"""Benchmark: the real mlxterp SAE training step (SAETrainer's compiled step) on one shape.

Default shape: d_model 768, 16x expansion (12,288 latents), TopK k=32, batches of 4,096 tokens,
on synthetic activations (a fixed random low-rank-plus-noise distribution with a mean offset, so
the top-k latents are not uniform) or on an .npy file of cached activations (--data). The step is
SAETrainer's own: built by `_build_step` exactly as `fit` builds it (the default optimizer, sign
descent with the schedule-free average, or `--config '{"optimizer": "adam", "lr_schedule":
"constant"}'`; gradient clipping, decoder gradient projection and renormalization, dead-latent
counters), and driven like `fit` drives it (one step queued behind the running one).

Prints tokens/s over the timed steps (after `--warmup` steps that include compilation), the
step's FLOP rate counting the work a sparse step does (2 n d m for the encoder matmul, plus
4 * 2 n k d for the sparse decoder, its activation gradient, and the decoder and encoder weight
gradients; a dense step's 6 n d m would overcount), and beside it a
plain float32 (n, d) @ (d, m) matmul measured in the same run.

    python benchmarks/sae_step.py                      # 3 warm-up + 20 timed steps
    python benchmarks/sae_step.py --steps 10 --warmup 2
    python benchmarks/sae_step.py --data acts.npy      # (n_tokens, 768) float32/float16 activations

Run on Linux with OpenBLAS preloaded (use_fast_blas() below re-executes with it when installed).
"""

from __future__ import annotations

import argparse
import json
import time

from mlxterp.platform import use_fast_blas  # noqa: E402

use_fast_blas()  # on Linux, re-executes with OpenBLAS preloaded

import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402

from mlxterp.sae.config import SAEConfig  # noqa: E402
from mlxterp.sae.model import SAE  # noqa: E402
from mlxterp.sae.optim import make_optimizer, training_cache_limit  # noqa: E402
from mlxterp.sae.train import STEP_SUMS, SAETrainer  # noqa: E402


def synthetic_batches(n_batches: int, batch: int, d: int, seed: int = 0) -> list[mx.array]:
    """Activation-like data: mean offset + 64-dim structured part + isotropic noise, float32."""
    rng = np.random.default_rng(seed)
    mean = rng.normal(size=d).astype(np.float32) * 2.0
    basis = rng.normal(size=(64, d)).astype(np.float32) / np.sqrt(d) * 8.0
    out = []
    for _ in range(n_batches):
        z = rng.standard_t(df=4, size=(batch, 64)).astype(np.float32)
        noise = rng.normal(size=(batch, d)).astype(np.float32)
        out.append(mx.array((mean + z @ basis + noise).astype(np.float32)))
    return out


def file_batches(path: str, n_batches: int, batch: int) -> list[mx.array]:
    data = np.load(path, mmap_mode="r")
    data = data.reshape(-1, data.shape[-1])
    if data.shape[0] < batch:
        raise SystemExit(f"{path} holds {data.shape[0]} tokens, fewer than one batch of {batch}")
    per_file = data.shape[0] // batch
    return [mx.array(np.asarray(data[(i % per_file) * batch : (i % per_file + 1) * batch], dtype=np.float32))
            for i in range(n_batches)]


def build_trainer(d_model: int, config: SAEConfig, sample: mx.array, total_steps: int) -> SAETrainer:
    """An SAETrainer set up as `fit` sets it up (normalization, b_dec, optimizer, schedule), no data loop."""
    sae = SAE.from_config(d_model, config)
    trainer = SAETrainer(sae, config)
    trainer.total_steps = total_steps
    trainer.optimizer = make_optimizer(config, trainer.peak_lr, sae.trainable_parameters())
    sae.fit_normalization(sample)
    sae.init_b_dec(sample, "mean")  # the geometric median costs seconds and does not change the step
    mx.eval(sae.parameters())
    return trainer


def run_steps(trainer: SAETrainer, step, batches: list[mx.array]) -> None:
    """Drive the compiled step like SAETrainer._run_epoch: at most one step queued behind another."""
    pending = None
    for x in batches:
        step(x)
        mx.async_eval(trainer.sae.state, trainer.optimizer.state, trainer.counters)
        if pending is not None:
            mx.eval(pending)
        pending = trainer.counters["metric_sum"]
    mx.eval(trainer.sae.state, trainer.optimizer.state, trainer.counters)


def matmul_gflops(n: int, d: int, m: int, repeats: int = 5) -> float:
    """GFLOP/s of a plain float32 (n, d) @ (d, m) matmul, best of `repeats`."""
    a, b = mx.random.normal((n, d)), mx.random.normal((d, m))
    mx.eval(a, b, a @ b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        mx.eval(a @ b)
        best = min(best, time.perf_counter() - start)
    return 2 * n * d * m / best / 1e9


def step_flops(n: int, d: int, m: int, k: int) -> float:
    """Floating-point work of one sparse TopK step (see the module docstring)."""
    return 2 * n * d * m + 4 * 2 * n * k * d


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation)")
    parser.add_argument("--d-model", type=int, default=768)
    parser.add_argument("--expansion", type=int, default=16)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--data", default=None, help=".npy of cached activations (n, d_model)")
    parser.add_argument("--no-matmul", action="store_true", help="skip the reference matmul")
    parser.add_argument("--config", default="{}", help='SAEConfig overrides as JSON, e.g. \'{"optimizer": "adam"}\'')
    args = parser.parse_args()

    d, m, n, k = args.d_model, args.d_model * args.expansion, args.batch, args.k
    config = SAEConfig(expansion_factor=args.expansion, k=k, batch_size=n, validation_split=0.0,
                       checkpoint_every=None, log_every=1 << 30, **json.loads(args.config))
    total = args.warmup + args.steps
    n_distinct = min(total, 8)  # cycle a few batches: data generation is not what is measured
    batches = (file_batches(args.data, n_distinct, n) if args.data
               else synthetic_batches(n_distinct, n, d))
    mx.eval(batches)
    trainer = build_trainer(d, config, mx.concatenate(batches[:2]), total)
    plan = [batches[i % n_distinct] for i in range(total)]
    with training_cache_limit():  # as fit trains
        step = trainer._build_step(False)  # no dead latents yet (as in the first 1M tokens of fit)
        start = time.perf_counter()
        run_steps(trainer, step, plan[: args.warmup])
        warm_s = time.perf_counter() - start
        start = time.perf_counter()
        run_steps(trainer, step, plan[args.warmup :])
        timed_s = time.perf_counter() - start

    sums = np.array(trainer.counters["metric_sum"]) / total
    tok_s = args.steps * n / timed_s
    flops = step_flops(n, d, m, k) * args.steps / timed_s / 1e9
    print(f"mlx {mx.__version__}  device {mx.default_device()}  shape d={d} m={m} k={k} batch={n}")
    print(f"warm-up {args.warmup} steps {warm_s:.2f} s; timed {args.steps} steps {timed_s:.2f} s "
          f"({1e3 * timed_s / args.steps:.0f} ms/step)")
    metric = dict(zip(STEP_SUMS, sums))
    print(f"mean loss {metric['loss']:.4f}  fvu {metric['fvu']:.4f}  l0 {metric['l0']:.1f}")
    print(f"tokens/s {tok_s:,.0f}")
    print(f"step GFLOP/s {flops:.1f}")
    if not args.no_matmul:
        ref = matmul_gflops(n, d, m)
        print(f"plain float32 matmul ({n}x{d})@({d}x{m}) GFLOP/s {ref:.1f}  (step/matmul {flops / ref:.2f})")


if __name__ == "__main__":
    main()
