"""load_sae through the real huggingface_hub code: a hub cache laid out as huggingface_hub writes
it (models--org--name/refs/main -> snapshots/<commit>/...) stands in for the network, and an
endpoint on a closed loopback port for a hub that cannot be reached."""

import shutil
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from mlxterp import load_sae
from mlxterp.errors import SAEError

FIXTURES = Path(__file__).parent / "fixtures" / "foreign"
GEMMA = "gemma-scope-2b-pt-res/layer_3/width_64/average_l0_20"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
UNREACHABLE = "http://127.0.0.1:9"  # the discard port: nothing listens, the connection is refused at once


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty hub cache that huggingface_hub reads (offline unless a test says otherwise)."""
    import huggingface_hub.constants as constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def cache_folder(cache: Path, repo_id: str, folder: str, source: Path) -> None:
    """Put `source` at `folder` of `repo_id`'s main snapshot, as a download would have."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    shutil.copytree(source, repo / "snapshots" / COMMIT / folder)


def assert_matches_fixture(sae, fixture: Path) -> None:
    expected = np.load(fixture / "expected.npz", allow_pickle=False)
    x = mx.array(expected["x"])
    codes = np.array(sae.encode(x))
    assert np.array_equal(codes > 0, expected["codes"] > 0)
    np.testing.assert_allclose(codes, expected["codes"], rtol=1e-5, atol=1e-5)


def test_release_and_sae_id_load_from_the_hub_cache(hub):
    cache_folder(hub, "google/gemma-scope-2b-pt-res", "layer_3/width_16k/average_l0_59", FIXTURES / GEMMA)
    sae = load_sae("gemma-scope-2b-pt-res-canonical", "layer_3/width_16k/canonical")
    assert (sae.architecture, sae.hook_point.layer, sae.hook_point.component) == ("jumprelu", 3, "output")
    source = sae.metadata["source"]
    assert (source["release"], source["sae_id"], source["model_name"]) == (
        "gemma-scope-2b-pt-res-canonical", "layer_3/width_16k/canonical", "gemma-2-2b")
    assert_matches_fixture(sae, FIXTURES / GEMMA)


def test_repo_and_subfolder_load_from_the_hub_cache(hub):
    cache_folder(hub, "EleutherAI/sae-tiny-model", "layers.2", FIXTURES / "sparsify_single" / "layers.2")
    sae = load_sae("EleutherAI/sae-tiny-model", subfolder="layers.2")
    assert (sae.hook_point.layer, sae.hook_point.component, sae.k) == (2, "output", 5)
    assert sae.metadata["source"]["repo_id"] == "EleutherAI/sae-tiny-model"
    assert_matches_fixture(sae, FIXTURES / "sparsify_single" / "layers.2")
    with pytest.raises(SAEError, match="EleutherAI/sae-tiny-model has no folder 'layers.7'"):
        load_sae("EleutherAI/sae-tiny-model", subfolder="layers.7")


def test_unreachable_hub_uses_the_cache_or_says_what_to_do(hub, monkeypatch):
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", UNREACHABLE)
    with pytest.raises(SAEError, match=r"could not fetch google/gemma-scope-2b-pt-res/layer_3/width_16k/average_l0_59 "
                                       r"from the Hugging Face hub \(LocalEntryNotFoundError.*check the network "
                                       r"connection.*download the folder yourself and pass its local path"):
        load_sae("gemma-scope-2b-pt-res-canonical", "layer_3/width_16k/canonical")
    cache_folder(hub, "google/gemma-scope-2b-pt-res", "layer_3/width_16k/average_l0_59", FIXTURES / GEMMA)
    assert_matches_fixture(load_sae("gemma-scope-2b-pt-res-canonical", "layer_3/width_16k/canonical"), FIXTURES / GEMMA)


def test_offline_with_nothing_cached_is_a_clear_error(hub):
    with pytest.raises(SAEError, match=r"could not fetch EleutherAI/sae-tiny-model/layers.2 from the Hugging Face hub"
                                       r".*HF_HUB_OFFLINE"):
        load_sae("EleutherAI/sae-tiny-model", subfolder="layers.2")
