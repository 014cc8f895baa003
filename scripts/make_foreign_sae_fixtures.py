"""Write tests/sae/fixtures/foreign/: tiny SAEs (d_model 16, d_hidden 64) saved by the real SAELens
and sparsify libraries (and a Gemma Scope params.npz encoded by the Gemma Scope tutorial's JumpReLU),
each with expected.npz holding a fixed input `x` and the library's own `codes` and `recon` of it.
Then the round trip: SAEs trained-shaped in mlxterp, exported with sae.save(format=...), loaded
by the libraries, must give mlxterp's codes. Prints every figure.

Runs in its own venv (torch is not an mlxterp dependency):
    python -m venv .fixture-venv && .fixture-venv/bin/pip install torch==2.13.0 sae-lens eai-sparsify
    .fixture-venv/bin/python scripts/make_foreign_sae_fixtures.py
The round trip runs mlxterp in .venv (scripts/setup.sh) through a subprocess.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "sae" / "fixtures" / "foreign"
D_MODEL, D_HIDDEN, N_TOKENS = 16, 64, 24


def fixed_input() -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(0).standard_normal((N_TOKENS, D_MODEL)).astype(np.float32) * 3)


def randomize(params: dict[str, torch.nn.Parameter], seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in params.items():
            scale = 0.3 if name.startswith("W") or "weight" in name else 0.2
            p.copy_(torch.randn(p.shape, generator=g) * scale)


def save_expected(folder: Path, x: torch.Tensor, codes: torch.Tensor, recon: torch.Tensor) -> None:
    np.savez(folder / "expected.npz", x=x.numpy(), codes=codes.detach().numpy().astype(np.float32),
             recon=recon.detach().numpy().astype(np.float32))
    active = (codes > 0).sum(-1).float()
    print(f"  {folder.name}: mean L0 {active.mean():.2f} (min {active.min():.0f}, max {active.max():.0f})")


def saelens_fixtures(x: torch.Tensor) -> None:
    import sae_lens
    from sae_lens import SAE
    from sae_lens.saes import JumpReLUSAE, JumpReLUSAEConfig, StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    print(f"SAELens {sae_lens.__version__}")

    def meta(hook: str) -> SAEMetadata:
        return SAEMetadata(model_name="tiny-model", hook_name=hook, context_size=128, prepend_bos=True)

    cases = [
        ("saelens_standard", StandardSAE, StandardSAEConfig(
            d_in=D_MODEL, d_sae=D_HIDDEN, apply_b_dec_to_input=False, normalize_activations="constant_norm_rescale",
            metadata=meta("blocks.2.hook_resid_pre")), 1),
        ("saelens_topk", TopKSAE, TopKSAEConfig(d_in=D_MODEL, d_sae=D_HIDDEN, k=6, metadata=meta("blocks.1.hook_mlp_out")), 2),
        ("saelens_topk_rescaled", TopKSAE, TopKSAEConfig(d_in=D_MODEL, d_sae=D_HIDDEN, k=6, rescale_acts_by_decoder_norm=True,
                                                         metadata=meta("blocks.0.hook_attn_out")), 3),
        ("saelens_jumprelu", JumpReLUSAE, JumpReLUSAEConfig(d_in=D_MODEL, d_sae=D_HIDDEN, metadata=meta("blocks.3.hook_resid_post")), 4),
    ]
    for name, cls, cfg, seed in cases:
        sae = cls(cfg)
        randomize(dict(sae.named_parameters()), seed)
        if name == "saelens_jumprelu":
            with torch.no_grad():
                sae.threshold.copy_(torch.rand(D_HIDDEN, generator=torch.Generator().manual_seed(seed)) * 0.8)
        folder = OUT / name
        shutil.rmtree(folder, ignore_errors=True)
        sae.save_model(str(folder))
        loaded = SAE.load_from_disk(str(folder))  # the fixture is what SAELens reads back
        with torch.no_grad():
            codes = loaded.encode(x)
            save_expected(folder, x, codes, loaded.decode(codes))


def sparsify_fixtures(x: torch.Tensor) -> None:
    from sparsify import SparseCoder, SparseCoderConfig

    print("sparsify")
    made = []
    for sub, seed in (("sparsify_single/layers.2", 5), ("sparsify_run/layers.1", 6), ("sparsify_run/layers.1.mlp", 7)):
        sae = SparseCoder(D_MODEL, SparseCoderConfig(num_latents=D_HIDDEN, k=5))
        randomize(dict(sae.named_parameters()), seed)
        folder = OUT / sub
        shutil.rmtree(folder, ignore_errors=True)
        sae.save_to_disk(folder)
        made.append(folder)
    (OUT / "sparsify_run" / "config.json").write_text(json.dumps({"model": "tiny-model", "ctx_len": 64}))
    for folder in made:
        loaded = SparseCoder.load_from_disk(folder)
        with torch.no_grad():
            enc = loaded.encode(x)
            codes = torch.zeros(N_TOKENS, D_HIDDEN).scatter_(-1, enc.top_indices, enc.top_acts)
            recon = loaded.decode(enc.top_acts, enc.top_indices)
        save_expected(folder, x, codes, recon)


class GemmaScopeJumpReLU(torch.nn.Module):
    """The JumpReLU SAE of the Gemma Scope tutorial (google-deepmind), verbatim in its maths."""

    def __init__(self, params: dict[str, np.ndarray]):
        super().__init__()
        for name, value in params.items():
            setattr(self, name, torch.nn.Parameter(torch.from_numpy(value)))

    def encode(self, input_acts):
        pre_acts = input_acts @ self.W_enc + self.b_enc
        mask = pre_acts > self.threshold
        return mask * torch.nn.functional.relu(pre_acts)

    def decode(self, acts):
        return acts @ self.W_dec + self.b_dec


def gemmascope_fixture(x: torch.Tensor) -> None:
    print("Gemma Scope (tutorial JumpReLU)")
    rng = np.random.default_rng(8)
    params = {"W_enc": rng.standard_normal((D_MODEL, D_HIDDEN)) * 0.3, "W_dec": rng.standard_normal((D_HIDDEN, D_MODEL)) * 0.3,
              "b_enc": rng.standard_normal(D_HIDDEN) * 0.2, "b_dec": rng.standard_normal(D_MODEL) * 0.2,
              "threshold": rng.random(D_HIDDEN) * 0.8}
    params = {k: v.astype(np.float32) for k, v in params.items()}
    base = OUT / "gemma-scope-2b-pt-res"
    shutil.rmtree(base, ignore_errors=True)
    folder = base / "layer_3" / "width_64" / "average_l0_20"
    folder.mkdir(parents=True)
    np.savez(folder / "params.npz", **params)
    sae = GemmaScopeJumpReLU(params)
    with torch.no_grad():
        codes = sae.encode(x)
        save_expected(folder, x, codes, sae.decode(codes))


EXPORT = r"""
import json, sys
import numpy as np, mlx.core as mx
from mlxterp import SAE
from mlxterp.hookpoint import HookPoint
out = sys.argv[1]
x = mx.array(np.load(out + "/x.npy"))
cases = [("topk_expected_norm", "topk", "expected_norm"), ("relu_standardize", "relu", "standardize"),
         ("batchtopk", "batchtopk", "none")]
for name, arch, norm in cases:
    sae = SAE(16, 64, k=6, architecture=arch, normalization=norm, seed=3)
    rng = np.random.default_rng(9)
    sae.b_enc = mx.array(rng.standard_normal(64).astype(np.float32) * 0.2)
    sae.b_dec = mx.array(rng.standard_normal(16).astype(np.float32) * 0.2)
    sae.fit_normalization(x * 2 + 1)
    if arch == "batchtopk":
        sae.threshold = mx.array(0.4)
    sae.hook_point = HookPoint(2, "mlp", "model.layers.2.mlp")
    sae.metadata["model_name"] = "tiny-model"; sae.metadata["context_length"] = 128
    codes, recon = sae.encode(x), sae(x)
    np.save(f"{out}/{name}.codes.npy", np.array(codes)); np.save(f"{out}/{name}.recon.npy", np.array(recon))
    sae.save(f"{out}/{name}.saelens", format="saelens")
    if arch == "topk":
        sae.save(f"{out}/{name}.sparsify", format="sparsify")
"""


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def round_trip(x: torch.Tensor) -> None:
    from sae_lens import SAE
    from sparsify import SparseCoder

    python = ROOT / ".venv" / "bin" / "python"
    print("round trip (mlxterp export -> library load)")
    with tempfile.TemporaryDirectory() as tmp:
        np.save(f"{tmp}/x.npy", x.numpy())
        subprocess.run([str(python), "-c", EXPORT, tmp], check=True, cwd=ROOT)
        for name in ("topk_expected_norm", "relu_standardize", "batchtopk"):
            ours_codes, ours_recon = np.load(f"{tmp}/{name}.codes.npy"), np.load(f"{tmp}/{name}.recon.npy")
            sae = SAE.load_from_disk(f"{tmp}/{name}.saelens")
            with torch.no_grad():
                codes = sae.encode(x)
                recon = sae.decode(codes).numpy()
            codes = codes.numpy()
            same = bool(np.array_equal(codes > 0, ours_codes > 0))
            print(f"  saelens {name} ({sae.cfg.architecture()}, hook {sae.cfg.metadata.hook_name}, model "
                  f"{sae.cfg.metadata.model_name}, context {sae.cfg.metadata.context_size}): codes rel err "
                  f"{rel(codes, ours_codes):.2e}, recon rel err {rel(recon, ours_recon):.2e}, same firing {same}")
            assert same and rel(codes, ours_codes) <= 1e-5 and rel(recon, ours_recon) <= 1e-5
        sae = SparseCoder.load_from_disk(f"{tmp}/topk_expected_norm.sparsify")
        ours_codes = np.load(f"{tmp}/topk_expected_norm.codes.npy")
        ours_recon = np.load(f"{tmp}/topk_expected_norm.recon.npy")
        with torch.no_grad():
            enc = sae.encode(x)
            codes = torch.zeros(N_TOKENS, D_HIDDEN).scatter_(-1, enc.top_indices, enc.top_acts).numpy()
            recon = sae.decode(enc.top_acts, enc.top_indices).numpy()
        same = bool(np.array_equal(codes > 0, ours_codes > 0))
        hook = json.loads(Path(f"{tmp}/topk_expected_norm.sparsify/cfg.json").read_text())["hookpoint"]
        print(f"  sparsify topk_expected_norm (hookpoint {hook}): codes rel err {rel(codes, ours_codes):.2e}, "
              f"recon rel err {rel(recon, ours_recon):.2e}, same firing {same}")
        assert same and rel(codes, ours_codes) <= 1e-5 and rel(recon, ours_recon) <= 1e-5


def main() -> None:
    torch.manual_seed(0)
    OUT.mkdir(parents=True, exist_ok=True)
    x = fixed_input()
    saelens_fixtures(x)
    sparsify_fixtures(x)
    gemmascope_fixture(x)
    if "--no-round-trip" not in sys.argv:
        round_trip(x)


if __name__ == "__main__":
    main()
