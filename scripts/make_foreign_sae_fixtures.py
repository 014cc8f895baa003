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
    from sae_lens.saes import (GatedSAE, GatedSAEConfig, JumpReLUSAE, JumpReLUSAEConfig, StandardSAE, StandardSAEConfig,
                               TopKSAE, TopKSAEConfig)
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
        ("saelens_gated", GatedSAE, GatedSAEConfig(d_in=D_MODEL, d_sae=D_HIDDEN, metadata=meta("blocks.2.hook_mlp_out")), 9),
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


# Runs in mlxterp's venv: the SAEs of tests/sae/test_export_round_trip.py, their codes and exports.
EXPORT = r"""
import json, sys
import numpy as np, mlx.core as mx
sys.path.insert(0, "tests/sae")
from test_export_round_trip import CASES, recipe_sae
out = sys.argv[1]
x = mx.array(np.load(out + "/x.npy"))
open(out + "/cases.json", "w").write(json.dumps(CASES))
for name, arch, norm, fmt in CASES:
    sae = recipe_sae(arch, norm, x)
    np.save(f"{out}/{name}.codes.npy", np.array(sae.encode(x))); np.save(f"{out}/{name}.recon.npy", np.array(sae(x)))
    sae.save(f"{out}/{name}.{fmt}", format=fmt)
"""


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def library_codes(folder: str, fmt: str, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray, str]:
    """(codes, reconstruction, description) of the exported folder as the library loads it."""
    from sae_lens import SAE
    from sparsify import SparseCoder

    with torch.no_grad():
        if fmt == "saelens":
            sae = SAE.load_from_disk(folder)
            codes = sae.encode(x)
            meta = sae.cfg.metadata
            about = (f"{sae.cfg.architecture()}, hook {meta.hook_name}, model {meta.model_name}, "
                     f"context {meta.context_size}")
            return codes.numpy(), sae.decode(codes).numpy(), about
        sae = SparseCoder.load_from_disk(folder)
        enc = sae.encode(x)
        codes = torch.zeros(N_TOKENS, D_HIDDEN).scatter_(-1, enc.top_indices, enc.top_acts)
        hook = json.loads(Path(folder, "cfg.json").read_text())["hookpoint"]
        return codes.numpy(), sae.decode(enc.top_acts, enc.top_indices).numpy(), f"hookpoint {hook}"


def round_trip(x: torch.Tensor) -> None:
    """mlxterp exports, loaded by the libraries: their codes must be mlxterp's. The exports and the
    libraries' codes are kept in OUT/exported for tests/sae/test_export_round_trip.py."""
    python = ROOT / ".venv" / "bin" / "python"
    exported = OUT / "exported"
    shutil.rmtree(exported, ignore_errors=True)
    exported.mkdir()
    print("round trip (mlxterp export -> library load)")
    with tempfile.TemporaryDirectory() as tmp:
        np.save(f"{tmp}/x.npy", x.numpy())
        subprocess.run([str(python), "-c", EXPORT, tmp], check=True, cwd=ROOT)
        for name, _, _, fmt in json.loads(Path(tmp, "cases.json").read_text()):
            ours_codes, ours_recon = np.load(f"{tmp}/{name}.codes.npy"), np.load(f"{tmp}/{name}.recon.npy")
            codes, recon, about = library_codes(f"{tmp}/{name}.{fmt}", fmt, x)
            same = bool(np.array_equal(codes > 0, ours_codes > 0))
            print(f"  {fmt} {name} ({about}): codes rel err {rel(codes, ours_codes):.2e}, "
                  f"recon rel err {rel(recon, ours_recon):.2e}, same firing {same}")
            assert same and rel(codes, ours_codes) <= 1e-5 and rel(recon, ours_recon) <= 1e-5
            shutil.copytree(f"{tmp}/{name}.{fmt}", exported / f"{name}.{fmt}")
            np.savez(exported / f"{name}.{fmt}" / "library.npz", x=x.numpy(), codes=codes.astype(np.float32),
                     recon=recon.astype(np.float32))


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
