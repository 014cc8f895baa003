"""mlxterp's exports as SAELens and sparsify load them, without torch: fixtures/foreign/exported holds
folders that mlxterp wrote and the libraries loaded (scripts/make_foreign_sae_fixtures.py), with
the libraries' codes of a fixed input. Today's writer must still write those folders, and the
libraries' codes must be mlxterp's."""

import json
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from safetensors.numpy import load_file

from mlxterp.hookpoint import HookPoint
from mlxterp.sae.model import SAE

EXPORTED = Path(__file__).parent / "fixtures" / "foreign" / "exported"
# name, architecture, normalization, format written
CASES = [("topk_expected_norm", "topk", "expected_norm", "saelens"),
         ("relu_standardize", "relu", "standardize", "saelens"),
         ("batchtopk", "batchtopk", "none", "saelens"),
         ("topk_expected_norm", "topk", "expected_norm", "sparsify")]
WEIGHTS = {"saelens": "sae_weights.safetensors", "sparsify": "sae.safetensors"}


def recipe_sae(architecture: str, normalization: str, x: mx.array) -> SAE:
    """The SAE each case exports (the fixture script runs this too): seeded weights, normalization
    fitted to 2x + 1."""
    sae = SAE(16, 64, k=6, architecture=architecture, normalization=normalization, seed=3)
    rng = np.random.default_rng(9)
    sae.b_enc = mx.array(rng.standard_normal(64).astype(np.float32) * 0.2)
    sae.b_dec = mx.array(rng.standard_normal(16).astype(np.float32) * 0.2)
    sae.fit_normalization(x * 2 + 1)
    if architecture == "batchtopk":
        sae.threshold = mx.array(0.4)
    sae.hook_point = HookPoint(2, "mlp", "model.layers.2.mlp")
    sae.metadata.update(model_name="tiny-model", context_length=128)
    return sae


@pytest.mark.parametrize("name, architecture, normalization, fmt", CASES, ids=lambda c: str(c))
def test_the_libraries_codes_of_our_export_are_ours(tmp_path, name, architecture, normalization, fmt):
    folder = EXPORTED / f"{name}.{fmt}"
    library = np.load(folder / "library.npz", allow_pickle=False)
    x = mx.array(library["x"])
    sae = recipe_sae(architecture, normalization, x)
    codes, recon = np.array(sae.encode(x)), np.array(sae(x))
    assert (library["codes"] > 0).any() and np.array_equal(codes > 0, library["codes"] > 0)
    scale = np.abs(library["codes"]).max()
    np.testing.assert_allclose(codes, library["codes"], rtol=1e-5, atol=1e-5 * scale)
    np.testing.assert_allclose(recon, library["recon"], rtol=1e-5, atol=1e-5 * np.abs(library["recon"]).max())

    sae.save(tmp_path / "now", format=fmt)  # what the libraries loaded is what mlxterp writes today
    assert json.loads((tmp_path / "now" / "cfg.json").read_text()) == json.loads((folder / "cfg.json").read_text())
    now, then = load_file(str(tmp_path / "now" / WEIGHTS[fmt])), load_file(str(folder / WEIGHTS[fmt]))
    assert sorted(now) == sorted(then)
    for key in then:
        np.testing.assert_allclose(now[key], then[key], rtol=1e-5, atol=1e-6, err_msg=key)
