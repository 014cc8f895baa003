"""Train EleutherAI sparsify's TopK SparseCoder on cached activations (.npy), sparsify's own loop.

Runs in .bench-venv (torch and eai-sparsify; not mlxterp dependencies). Called as a subprocess
by benchmarks/sae_smollm2.py and benchmarks/synthetic_dictionary.py:

    .bench-venv/bin/python benchmarks/sparsify_train.py --train acts.npy --out sae.npz \
        --expansion-factor 16 --k 32 --epochs 7 [--held-out held.npy] [--optimizer signum|adam] [--lr X]

What sparsify's `Trainer.fit` does per batch with its defaults (sparsify 1.3.3: loss_fn "fvu",
optimizer "signum" = SignSGD in schedulefree's ScheduleFreeWrapper, momentum 0.95, LR
5e-3 / sqrt(num_latents / 2^14), no LR schedule; auxk_alpha 0, multi_topk off, k_decay_steps
0), fed from an array instead of a model hook: b_dec set to the first batch's mean, decoder rows
renormalized before every forward, loss fvu + auxk_alpha * auxk + multi_topk_fvu / 8 against the
batch's total variance, backward, the decoder gradient projection, the optimizer step. With
`--optimizer adam`: torch.optim.Adam at 2e-4 / sqrt(num_latents / 2^14) with sparsify's linear
warmup (`--warmup-steps`, its default 1000) and linear decay to 0 over the run. Batches: the array
shuffled each epoch (numpy seed + epoch), cut into `--batch-size` tokens, last partial dropped.
As sparsify's checkpoints do, the schedule-free optimizer is switched to eval mode (its averaged
weights) before the weights are written: W_enc (num_latents, d), b_enc, W_dec (num_latents, d),
b_dec, as float32 in an .npz (plus the held-out reconstruction when --held-out is given).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from sparsify import SparseCoder, SparseCoderConfig
from sparsify.sign_sgd import SignSGD


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--held-out", default=None)
    parser.add_argument("--expansion-factor", type=int, default=16)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--optimizer", choices=("signum", "adam"), default="signum")
    parser.add_argument("--lr", type=float, default=None, help="default: sparsify's rule for the optimizer")
    parser.add_argument("--warmup-steps", type=int, default=1000, help="adam only (sparsify's lr_warmup_steps)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    data = np.load(args.train, mmap_mode="r")
    n, d = data.shape
    sae = SparseCoder(d, SparseCoderConfig(expansion_factor=args.expansion_factor, k=args.k), device="cpu",
                      dtype=torch.float32)
    m = sae.num_latents
    steps_per_epoch = n // args.batch_size
    total = steps_per_epoch * args.epochs
    schedulers = []
    if args.optimizer == "signum":
        from schedulefree import ScheduleFreeWrapper

        lr = args.lr or 5e-3 / (m / 2**14) ** 0.5
        opt = ScheduleFreeWrapper(SignSGD([dict(params=sae.parameters(), lr=lr)]), momentum=0.95)
        opt.train()
    else:
        from transformers import get_linear_schedule_with_warmup

        lr = args.lr or 2e-4 / (m / 2**14) ** 0.5
        opt = torch.optim.Adam([dict(params=sae.parameters(), lr=lr)])
        schedulers = [get_linear_schedule_with_warmup(opt, args.warmup_steps, total)]

    start = time.perf_counter()
    step = 0
    fvu_sum = 0.0
    for epoch in range(args.epochs):
        order = np.random.default_rng(args.seed + epoch).permutation(n)
        for i in range(steps_per_epoch):
            x = torch.from_numpy(np.ascontiguousarray(data[np.sort(order[i * args.batch_size:(i + 1) * args.batch_size])],
                                                      dtype=np.float32))
            if step == 0:
                sae.b_dec.data = x.mean(0)
            sae.set_decoder_norm_to_unit_norm()
            total_variance = (x - x.mean(0)).pow(2).sum()
            out = sae(x=x, y=x, dead_mask=None, total_variance=total_variance)
            loss = out.fvu + 0.0 * out.auxk_loss + out.multi_topk_fvu / 8
            loss.backward()
            sae.remove_gradient_parallel_to_decoder_directions()
            opt.step()
            opt.zero_grad()
            for s in schedulers:
                s.step()
            fvu_sum += float(out.fvu.detach())
            step += 1
    seconds = time.perf_counter() - start
    if hasattr(opt, "eval"):
        opt.eval()
    arrays = {"W_enc": sae.encoder.weight.detach().numpy(), "b_enc": sae.encoder.bias.detach().numpy(),
              "W_dec": sae.W_dec.detach().numpy(), "b_dec": sae.b_dec.detach().numpy(),
              "seconds": np.array(seconds), "steps": np.array(step), "lr": np.array(lr),
              "mean_train_fvu": np.array(fvu_sum / max(step, 1))}
    if args.held_out:
        held = torch.from_numpy(np.load(args.held_out).astype(np.float32))
        with torch.no_grad():
            enc = sae.encode(held)
            arrays["held_out_recon"] = sae.decode(enc.top_acts, enc.top_indices).numpy()
    np.savez(args.out, **{k: np.asarray(v, dtype=np.float32) for k, v in arrays.items()})
    print(f"sparsify {args.optimizer} lr {lr:.2e}: {step} steps of {args.batch_size} tokens in {seconds:.1f}s "
          f"({step * args.batch_size / seconds:,.0f} tokens/s), mean train fvu {fvu_sum / max(step, 1):.4f}")


if __name__ == "__main__":
    main()
