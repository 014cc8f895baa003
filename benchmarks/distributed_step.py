"""Benchmark: data-parallel SAE training steps on 1 or more ranks, with the all-reduce timed apart.

Runs SAETrainer's compiled step (as `sae_step.py` does) with the global batch split over the
ranks of `mlx.launch`, then times the step's all_sum alone: one buffer of the size the step sends
(every gradient, the per-latent counts and sums, the variance terms), back to back. Rank 0
prints tokens/s of the global batch, ms per step, and the all-reduce's ms and share of a step.

    python benchmarks/distributed_step.py                                  # one rank
    mlx.launch --backend ring -n 2 -- python benchmarks/distributed_step.py   # two local ranks

Defaults: SmolLM2-135M's width (d_model 576), 16x (9,216 latents), k 32, global batch 4,096.
"""

from __future__ import annotations

import argparse
import time

from mlxterp.platform import use_fast_blas  # noqa: E402

use_fast_blas()  # on Linux, re-executes with OpenBLAS preloaded

import mlx.core as mx  # noqa: E402
from mlx.utils import tree_flatten  # noqa: E402

from mlxterp import distributed  # noqa: E402
from mlxterp.sae.config import SAEConfig  # noqa: E402
from mlxterp.sae.optim import training_cache_limit  # noqa: E402
from sae_step import build_trainer, run_steps, synthetic_batches  # noqa: E402


def allreduce_ms(n_values: int, repeats: int) -> float:
    """Median ms of one all_sum of `n_values` float32 values (the ranks kept in step by it)."""
    group = distributed.group()
    buffer = mx.random.normal((n_values,))
    mx.eval(mx.distributed.all_sum(buffer, group=group))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        mx.eval(mx.distributed.all_sum(buffer, group=group))
        times.append(time.perf_counter() - start)
    return 1e3 * sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation)")
    parser.add_argument("--d-model", type=int, default=576)
    parser.add_argument("--expansion", type=int, default=16)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--global-batch", type=int, default=4096, help="tokens per step, all ranks together")
    parser.add_argument("--allreduce-repeats", type=int, default=10)
    args = parser.parse_args()

    group = distributed.group()
    rank, ranks = group.rank(), group.size()
    d, m, k = args.d_model, args.d_model * args.expansion, args.k
    batch = args.global_batch // ranks
    config = SAEConfig(expansion_factor=args.expansion, k=k, batch_size=batch, validation_split=0.0,
                       checkpoint_every=None, log_every=1 << 30)
    total = args.warmup + args.steps
    n_distinct = min(total, 4)
    batches = synthetic_batches(n_distinct, batch, d, seed=rank)
    mx.eval(batches)
    trainer = build_trainer(d, config, mx.concatenate(batches[:2]), total)
    trainer.dp.share_state(trainer)
    plan = [batches[i % n_distinct] for i in range(total)]
    with training_cache_limit():
        step = trainer._build_step(False)
        run_steps(trainer, step, plan[: args.warmup])
        start = time.perf_counter()
        run_steps(trainer, step, plan[args.warmup :])
        step_ms = 1e3 * (time.perf_counter() - start) / args.steps
    # What reduce_step sends: the gradients (W_enc, b_enc, W_dec, b_dec), the variance terms
    # (1 + d + 1), firing counts and activation sums (2 m), one minimum slot per rank.
    n_values = sum(p.size for _, p in tree_flatten(trainer.sae.trainable_parameters())) + d + 2 + 2 * m + ranks
    comm_ms = allreduce_ms(n_values, args.allreduce_repeats) if ranks > 1 else 0.0
    if rank == 0:
        print(f"mlx {mx.__version__}  ranks {ranks}  d={d} m={m} k={k}  global batch {batch * ranks} "
              f"({batch} per rank)")
        print(f"step {step_ms:.0f} ms  tokens/s {batch * ranks / step_ms * 1e3:,.0f}")
        if ranks > 1:
            print(f"all_sum of {n_values:,} float32 ({4 * n_values / 2**20:.1f} MiB): {comm_ms:.1f} ms "
                  f"= {comm_ms / step_ms:.1%} of a step; compute {step_ms - comm_ms:.0f} ms")


if __name__ == "__main__":
    main()
