"""Baseline: EleutherAI sparsify's own TopK SAE training step on torch, same shape as sae_step.py.

Runs in a separate environment (torch and sparsify are no mlxterp dependencies):

    python -m venv .bench-venv && .bench-venv/bin/pip install torch==2.13.0 eai-sparsify
    .bench-venv/bin/python benchmarks/sparsify_step.py [--steps 20 --warmup 3] [--optimizer adam]

The step is what sparsify's Trainer.fit does per batch with loss_fn="fvu" (its hook body and the
code after it), on sparsify's real SparseCoder: renormalize the decoder rows, forward (its fused
encoder with index_add backward, embedding_bag decoder), loss fvu + auxk_alpha * auxk_loss +
multi_topk_fvu / 8 (auxk_alpha 0 and multi_topk off are its defaults), backward, the did_fire
mask, `float(fvu)` for its running average, the decoder gradient projection, the optimizer step
and zero_grad, the LR scheduler, and the dead-latent counters. The optimizer is torch.optim.Adam
with sparsify's LR rule and linear warmup (`--optimizer adam`, what mlxterp uses) or sparsify's
default signum (SignSGD inside schedulefree's wrapper). Data: the same synthetic activations as
sae_step.py (same generator and seed), float32. Prints tokens/s over the timed steps.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from sparsify import SparseCoder, SparseCoderConfig
from sparsify.sign_sgd import SignSGD


def synthetic_batches(n_batches: int, batch: int, d: int, seed: int = 0) -> list[np.ndarray]:
    """Same generator as benchmarks/sae_step.py: mean offset + 64-dim structure + noise."""
    rng = np.random.default_rng(seed)
    mean = rng.normal(size=d).astype(np.float32) * 2.0
    basis = rng.normal(size=(64, d)).astype(np.float32) / np.sqrt(d) * 8.0
    out = []
    for _ in range(n_batches):
        z = rng.standard_t(df=4, size=(batch, 64)).astype(np.float32)
        noise = rng.normal(size=(batch, d)).astype(np.float32)
        out.append((mean + z @ basis + noise).astype(np.float32))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--d-model", type=int, default=768)
    parser.add_argument("--expansion", type=int, default=16)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--optimizer", choices=("adam", "signum"), default="adam")
    parser.add_argument("--data", default=None, help=".npy of cached activations (n, d_model)")
    args = parser.parse_args()

    torch.manual_seed(0)
    d, n = args.d_model, args.batch
    total = args.warmup + args.steps
    n_distinct = min(total, 8)
    if args.data:
        arr = np.load(args.data, mmap_mode="r").reshape(-1, d)
        per = arr.shape[0] // n
        batches = [np.asarray(arr[(i % per) * n : (i % per + 1) * n], dtype=np.float32) for i in range(n_distinct)]
    else:
        batches = synthetic_batches(n_distinct, n, d)
    batches = [torch.from_numpy(b) for b in batches]

    sae = SparseCoder(d, SparseCoderConfig(expansion_factor=args.expansion, k=args.k), device="cpu",
                      dtype=torch.float32)
    m = sae.num_latents
    if args.optimizer == "adam":
        from transformers import get_linear_schedule_with_warmup

        opt = torch.optim.Adam([dict(params=sae.parameters(), lr=2e-4 / (m / 2**14) ** 0.5)])
        schedulers = [get_linear_schedule_with_warmup(opt, 1000, total)]
    else:
        from schedulefree import ScheduleFreeWrapper

        opt = ScheduleFreeWrapper(SignSGD([dict(params=sae.parameters(), lr=5e-3 / (m / 2**14) ** 0.5)]),
                                  momentum=0.95)
        opt.train()
        schedulers = []
    num_tokens_since_fired = torch.zeros(m, dtype=torch.long)
    did_fire = torch.zeros(m, dtype=torch.bool)
    fvu_sum = 0.0

    def step(x: torch.Tensor, first: bool) -> None:
        nonlocal fvu_sum
        if first:  # sparsify centres b_dec on the first batch's mean
            sae.b_dec.data = x.mean(0)
        sae.set_decoder_norm_to_unit_norm()
        total_variance = (x - x.mean(0)).pow(2).sum()
        out = sae(x=x, y=x, dead_mask=None, total_variance=total_variance)
        did_fire[out.latent_indices.flatten()] = True
        fvu_sum += float(out.fvu.detach())
        loss = out.fvu + 0.0 * out.auxk_loss + out.multi_topk_fvu / 8
        loss.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
        for s in schedulers:
            s.step()
        with torch.no_grad():
            num_tokens_since_fired.add_(x.shape[0])
            num_tokens_since_fired[did_fire] = 0
            did_fire.zero_()

    plan = [batches[i % n_distinct] for i in range(total)]
    start = time.perf_counter()
    for i, x in enumerate(plan[: args.warmup]):
        step(x, i == 0)
    warm_s = time.perf_counter() - start
    start = time.perf_counter()
    for x in plan[args.warmup :]:
        step(x, False)
    timed_s = time.perf_counter() - start

    print(f"torch {torch.__version__} threads {torch.get_num_threads()}  optimizer {args.optimizer}  "
          f"shape d={d} m={m} k={args.k} batch={n}")
    print(f"warm-up {args.warmup} steps {warm_s:.2f} s; timed {args.steps} steps {timed_s:.2f} s "
          f"({1e3 * timed_s / args.steps:.0f} ms/step)")
    print(f"mean fvu {fvu_sum / total:.4f}")
    print(f"tokens/s {args.steps * n / timed_s:,.0f}")


if __name__ == "__main__":
    main()
