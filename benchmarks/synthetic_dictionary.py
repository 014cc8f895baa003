"""Benchmark: does an SAE recover a known sparse dictionary? mlxterp's recipe vs a plain TopK SAE.

Activations are drawn from a known dictionary: unit-norm atoms (random directions), a few
active per sample (the count varies per sample), positive log-normal coefficients, atom
frequencies uniform or power-law, plus a mean offset and Gaussian noise. Each SAE has as many
latents as the dictionary has atoms and is trained on the same arrays, batches of 4,096 and epochs
(so the same steps), at the case's peak LR (Adam) or its own LR rule (sign descent). Reported per
case and SAE:

- mmcs: mean over true atoms of the max cosine between the atom and any decoder row;
- mmcs_freq: the same over the frequent atoms only (firing on at least half the uniform rate,
  k_mean / n_atoms / 2; every atom in the uniform cases);
- fvu: fraction of variance unexplained on 8,192 held-out samples;
- l0, dead (mlxterp SAEs): active latents per held-out sample, latents that never fire on them.

SAEs:
- `plain`: a ~30-line TopK SAE written below (Adam, constant LR, unit-norm decoder rows with the
  parallel gradient component removed, b_dec = data mean, FVU loss; no clipping, no AuxK);
- `mlxterp:<variant>`: `train_sae_on_activations` with `SAEConfig(expansion_factor, k, num_epochs,
  learning_rate)` and the variant's overrides (`default`: none; `signum_sf`: sparsify's recipe,
  sign descent with the schedule-free average at its own LR rule); `--variants` lists them.
- `sparsify` (with `--sparsify`, needs .bench-venv): EleutherAI sparsify's SparseCoder trained by
  benchmarks/sparsify_train.py on the same arrays (see that file for what its loop does).

    python benchmarks/synthetic_dictionary.py                       # the default cases and variants
    python benchmarks/synthetic_dictionary.py --variants default cosine_0.1 signum_sf --seeds 0 1
    python benchmarks/synthetic_dictionary.py --sparsify            # adds sparsify beside them
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

from mlxterp.platform import use_fast_blas  # noqa: E402

use_fast_blas()  # on Linux, re-executes with OpenBLAS preloaded

import mlx.core as mx  # noqa: E402
import mlx.optimizers as optim  # noqa: E402
import numpy as np  # noqa: E402

from mlxterp.sae.config import SAEConfig  # noqa: E402
from mlxterp.sae.metrics import evaluate_reconstruction  # noqa: E402
from mlxterp.sae.train import train_sae_on_activations  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BATCH = 4096
HELD_OUT = 8192


@dataclass(frozen=True)
class Case:
    name: str
    d: int            # activation width
    n_atoms: int      # dictionary size (= SAE latents; a multiple of d)
    k_mean: float     # mean number of active atoms per sample (1 + Poisson(k_mean - 1), at most k)
    freq: str         # "uniform" or "powerlaw"
    alpha: float      # power-law exponent: p_i ~ (i + 1) ** -alpha
    offset: float     # norm of the mean offset, in units of a typical sample's norm
    noise: float      # noise norm, in units of a typical sample's norm
    k: int            # SAE k (also the most atoms a sample has active)
    n_tokens: int     # training samples
    epochs: int
    lr: float         # peak LR, every SAE


CASES = [
    Case("d64-m256-uniform", 64, 256, 4, "uniform", 0.0, 0.0, 0.05, 8, 65536, 64, 5e-3),
    Case("d64-m256-powerlaw-offset", 64, 256, 4, "powerlaw", 0.8, 2.0, 0.05, 8, 65536, 64, 5e-3),
    Case("d128-m512-uniform-offset-k12", 128, 512, 6, "uniform", 0.0, 1.0, 0.1, 12, 65536, 64, 5e-3),
]

# mlxterp variants: SAEConfig overrides on top of (expansion_factor, k, num_epochs, learning_rate=the
# case's LR). That LR is an Adam LR: the sign-descent variants take their own LR rule (learning_rate
# None), as sparsify does.
SIGNUM_SF = {"optimizer": "signum", "lr_schedule": "schedule_free", "learning_rate": None}
VARIANTS: dict[str, dict] = {
    "default": {},                                           # Adam, warmup, constant LR
    "cosine_0.1": {"lr_schedule": "cosine", "min_lr_ratio": 0.1},   # the default before 2026-12-01
    "no_warmup": {"warmup_steps": 0},
    "no_clip": {"gradient_clip": None},
    "b_dec_mean": {"b_dec_init": "mean"},
    "no_warmup_b_dec_mean": {"warmup_steps": 0, "b_dec_init": "mean"},
    "no_norm": {"normalize_input": False},
    "no_auxk": {"auxk_coefficient": 0.0},
    "dead_16k": {"dead_tokens_threshold": 16384},
    "lr_rule": {"learning_rate": None},
    "adam_schedule_free": {"lr_schedule": "schedule_free"},
    "signum_sf": SIGNUM_SF,                                  # sparsify's default recipe
    "signum_sf_no_norm": {**SIGNUM_SF, "normalize_input": False},
    "signum_sf_no_warmup": {**SIGNUM_SF, "warmup_steps": 0},
    "signum_constant": {**SIGNUM_SF, "lr_schedule": "constant"},   # no average
    # Architectures at the same k: TopK (the default), BatchTopK, JumpReLU (L0 target k), Matryoshka.
    "batchtopk": {"architecture": "batchtopk"},
    "jumprelu": {"architecture": "jumprelu"},
    "matryoshka": {"architecture": "matryoshka_batchtopk"},
}
DEFAULT_VARIANTS = ["default", "signum_sf"]


# -- data ---------------------------------------------------------------------------------
def make_case(case: Case, seed: int) -> dict[str, np.ndarray]:
    """Dictionary (n_atoms, d), training and held-out samples, atom firing frequencies."""
    rng = np.random.default_rng(seed)
    atoms = rng.normal(size=(case.n_atoms, case.d))
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    if case.freq == "uniform":
        p = np.full(case.n_atoms, 1.0 / case.n_atoms)
    else:
        p = (np.arange(case.n_atoms) + 1.0) ** -case.alpha
        p = p[rng.permutation(case.n_atoms)] / p.sum()
    k_max = case.k
    # A typical sample's norm: sqrt(E[#active] * E[c^2]) with c ~ lognormal(0, 0.5).
    typical = np.sqrt(case.k_mean * np.exp(0.5))
    offset_dir = rng.normal(size=case.d)
    offset = offset_dir / np.linalg.norm(offset_dir) * case.offset * typical
    noise_std = case.noise * typical / np.sqrt(case.d)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        x = np.empty((n, case.d), dtype=np.float32)
        fired = np.zeros(case.n_atoms)
        for start in range(0, n, 8192):
            m = min(8192, n - start)
            count = np.minimum(1 + rng.poisson(case.k_mean - 1, size=m), k_max)
            # Sampling without replacement in proportion to p (Gumbel top-k), then the first `count`.
            keys = np.log(p)[None, :] - np.log(-np.log(rng.random((m, case.n_atoms))))
            idx = np.argpartition(-keys, k_max - 1, axis=1)[:, :k_max]
            order = np.argsort(-np.take_along_axis(keys, idx, axis=1), axis=1)
            idx = np.take_along_axis(idx, order, axis=1)
            live = np.arange(k_max)[None, :] < count[:, None]
            coef = rng.lognormal(0.0, 0.5, size=(m, k_max)) * live
            np.add.at(fired, idx[live], 1)
            x[start:start + m] = (np.einsum("nk,nkd->nd", coef, atoms[idx]) + offset
                                  + rng.normal(scale=noise_std, size=(m, case.d)))
        return x, fired

    train, fired = draw(case.n_tokens)
    held_out, _ = draw(HELD_OUT)
    return {"atoms": atoms.astype(np.float32), "train": train, "held_out": held_out,
            "frequency": fired / case.n_tokens}


def score(atoms: np.ndarray, frequency: np.ndarray, case: Case, w_dec: np.ndarray,
          recon: np.ndarray, held_out: np.ndarray) -> dict[str, float]:
    w = w_dec / np.maximum(np.linalg.norm(w_dec, axis=1, keepdims=True), 1e-12)
    best = (atoms @ w.T).max(axis=1)
    frequent = frequency >= case.k_mean / case.n_atoms / 2
    fvu = float(np.sum((held_out - recon) ** 2) / np.sum((held_out - held_out.mean(0)) ** 2))
    return {"mmcs": float(best.mean()), "mmcs_freq": float(best[frequent].mean()),
            "n_freq": int(frequent.sum()), "frac_freq_above_0.99": float((best[frequent] > 0.99).mean()),
            "fvu": fvu}


# -- the plain TopK SAE --------------------------------------------------------------------
def plain_topk(x: np.ndarray, m: int, k: int, lr: float, epochs: int, seed: int, bias_correction: bool = False):
    """A plain TopK SAE: Adam at a constant LR, unit-norm decoder, FVU loss. Returns (W_dec, recon fn).

    MLX's Adam has no bias correction by default: its early steps are larger than the nominal LR
    ((1 - 0.9^t) / sqrt(1 - 0.999^t): 3.2x at step 100, 1.6x at 500, 1.26x at 1000). `plain_bc`
    runs the same SAE with bias correction, as mlxterp's and torch's Adam do.
    """
    d = x.shape[1]
    w = mx.random.normal((m, d), key=mx.random.key(seed))
    w = w / mx.linalg.norm(w, axis=1, keepdims=True)
    p = {"W_enc": w.T, "b_enc": mx.zeros((m,)), "W_dec": w, "b_dec": mx.array(x[:BATCH].mean(0))}

    def recon(p, xb):
        pre = (xb - p["b_dec"]) @ p["W_enc"] + p["b_enc"]
        kth = mx.stop_gradient(mx.min(mx.topk(pre, k, axis=-1), axis=-1, keepdims=True))
        return (mx.maximum(pre, 0) * (pre >= kth)) @ p["W_dec"] + p["b_dec"]

    def loss(p, xb):
        return mx.sum(mx.square(recon(p, xb) - xb)) / mx.sum(mx.square(xb - mx.mean(xb, axis=0)))

    opt = optim.Adam(learning_rate=lr, bias_correction=bias_correction)
    opt.init(p)
    state = [p, opt.state]

    @partial(mx.compile, inputs=state, outputs=state)
    def step(xb):
        g = mx.grad(loss)(p, xb)
        g["W_dec"] = g["W_dec"] - mx.sum(g["W_dec"] * p["W_dec"], axis=1, keepdims=True) * p["W_dec"]
        p.update(opt.apply_gradients(g, p))
        p["W_dec"] = p["W_dec"] / mx.linalg.norm(p["W_dec"], axis=1, keepdims=True)

    rng = np.random.default_rng(seed)
    xs = mx.array(x)
    for epoch in range(epochs):
        order = mx.array(rng.permutation(len(x)))
        for start in range(0, len(x) - BATCH + 1, BATCH):
            step(xs[order[start:start + BATCH]])
            mx.eval(state)
    return np.array(p["W_dec"]), lambda xb: np.array(recon(p, mx.array(xb)))


# -- runners -------------------------------------------------------------------------------
def run_mlxterp(case: Case, data: dict, overrides: dict, seed: int):
    # validation_split=0: every SAE trains on the same tokens (the default holds out 5%, which
    # would cost mlxterp 6% of its steps here).
    cfg = dict(expansion_factor=case.n_atoms // case.d, k=case.k, num_epochs=case.epochs,
               learning_rate=case.lr, seed=seed, validation_split=0.0)
    cfg.update(overrides)
    sae = train_sae_on_activations(data["train"], SAEConfig(**cfg), progress=False)
    recon = np.array(sae(mx.array(data["held_out"])))
    held = evaluate_reconstruction(sae, [data["held_out"]])
    return np.array(sae.W_dec), recon, {"l0": held["l0"], "dead": held["dead_fraction"]}


def run_sparsify(case: Case, data: dict, seed: int, python: Path) -> tuple[np.ndarray, np.ndarray]:
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "train.npy", data["train"])
        np.save(Path(tmp) / "held_out.npy", data["held_out"])
        cmd = [str(python), str(ROOT / "benchmarks" / "sparsify_train.py"), "--train", f"{tmp}/train.npy",
               "--held-out", f"{tmp}/held_out.npy", "--out", f"{tmp}/sae.npz",
               "--expansion-factor", str(case.n_atoms // case.d), "--k", str(case.k),
               "--epochs", str(case.epochs), "--seed", str(seed),
               "--batch-size", str(BATCH)]
        subprocess.run(cmd, check=True, env={k: v for k, v in os.environ.items() if k != "LD_PRELOAD"},
                       stdout=subprocess.DEVNULL)
        out = np.load(f"{tmp}/sae.npz")
        return out["W_dec"], out["held_out_recon"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="*", default=[c.name for c in CASES])
    parser.add_argument("--variants", nargs="*", default=DEFAULT_VARIANTS, help=f"of {list(VARIANTS)}")
    parser.add_argument("--seeds", nargs="*", type=int, default=[0])
    parser.add_argument("--epochs", type=int, default=None, help="override every case's epochs")
    parser.add_argument("--lr", type=float, default=None, help="override every case's peak LR")
    parser.add_argument("--no-plain", action="store_true")
    parser.add_argument("--no-plain-bc", action="store_true", help="skip the plain SAE with Adam's bias correction")
    parser.add_argument("--sparsify", action="store_true", help="also train sparsify (needs .bench-venv)")
    parser.add_argument("--sparsify-python", default=str(ROOT / ".bench-venv" / "bin" / "python"))
    parser.add_argument("--out", default="benchmarks/results/synthetic_dictionary.json")
    args = parser.parse_args()
    cases = [c for c in CASES if c.name in args.cases]
    from dataclasses import replace
    cases = [replace(c, **{k: v for k, v in (("epochs", args.epochs), ("lr", args.lr)) if v is not None})
             for c in cases]
    rows = []
    start_all = time.perf_counter()
    for case in cases:
        for seed in args.seeds:
            data = make_case(case, seed)
            runs = [] if args.no_plain else [("plain", None)]
            runs += [] if args.no_plain_bc else [("plain_bc", None)]
            runs += [(f"mlxterp:{v}", VARIANTS[v]) for v in args.variants]
            if args.sparsify:
                runs.append(("sparsify", None))
            for name, overrides in runs:
                start = time.perf_counter()
                extra = {}
                if name.startswith("plain"):
                    w_dec, recon_fn = plain_topk(data["train"], case.n_atoms, case.k, case.lr, case.epochs, seed,
                                                 bias_correction=name == "plain_bc")
                    recon = recon_fn(data["held_out"])
                elif name == "sparsify":
                    w_dec, recon = run_sparsify(case, data, seed, Path(args.sparsify_python))
                else:
                    w_dec, recon, extra = run_mlxterp(case, data, overrides, seed)
                row = {"case": case.name, "seed": seed, "sae": name, "seconds": time.perf_counter() - start,
                       **score(data["atoms"], data["frequency"], case, w_dec, recon, data["held_out"]), **extra}
                rows.append(row)
                print(f"{case.name:28s} seed {seed} {name:28s} mmcs {row['mmcs']:.4f}  "
                      f"mmcs_freq {row['mmcs_freq']:.4f} (n={row['n_freq']}, >0.99: "
                      f"{100 * row['frac_freq_above_0.99']:.0f}%)  fvu {row['fvu']:.4f}  "
                      f"l0 {row.get('l0', float('nan')):.2f}  dead {100 * row.get('dead', float('nan')):.1f}%  "
                      f"{row['seconds']:.1f}s",
                      flush=True)
    print(f"total {time.perf_counter() - start_all:.0f}s")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"cases": [asdict(c) for c in cases], "variants": {v: VARIANTS[v] for v in args.variants},
                               "rows": rows}, indent=2, default=str))
    # Summary: mean over seeds.
    print("\n| case | SAE | mmcs | mmcs (frequent) | FVU | L0 | dead |\n| --- | --- | --- | --- | --- | --- | --- |")
    for case in cases:
        names = list(dict.fromkeys(r["sae"] for r in rows if r["case"] == case.name))
        for name in names:
            sel = [r for r in rows if r["case"] == case.name and r["sae"] == name]
            mean = {k: np.mean([r.get(k, np.nan) for r in sel]) for k in ("mmcs", "mmcs_freq", "fvu", "l0", "dead")}
            print(f"| {case.name} | {name} | {mean['mmcs']:.4f} | {mean['mmcs_freq']:.4f} | {mean['fvu']:.4f} | "
                  f"{mean['l0']:.2f} | {100 * mean['dead']:.1f}% |")


if __name__ == "__main__":
    main()
