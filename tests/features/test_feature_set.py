"""FeatureSet: built from an SAE and its stats, saved to one safetensors file, read back bit for bit."""

import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from mlxterp.errors import SAEError
from mlxterp.features import FeatureSet, SAEFeature
from mlxterp.sae import FeatureStats


@pytest.fixture
def feature_set(tiny_sae):
    n = tiny_sae.d_hidden
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 100, n)
    stats = FeatureStats(np.arange(n), 1234, counts, counts / 1234, rng.random(n).astype(np.float32),
                         rng.random(n).astype(np.float32))
    labels = [None] * n
    labels[3] = "golden things ✨"
    return FeatureSet.from_sae(tiny_sae, stats, labels)


def test_round_trip_is_bit_identical(feature_set, tmp_path):
    path = tmp_path / "features.safetensors"
    feature_set.save(path)
    loaded = FeatureSet.load(path)
    np.testing.assert_array_equal(np.array(loaded.decoder), np.array(feature_set.decoder))
    np.testing.assert_array_equal(np.array(loaded.encoder), np.array(feature_set.encoder))
    assert loaded.stats.keys() == feature_set.stats.keys()
    for name in loaded.stats:
        assert loaded.stats[name].tobytes() == feature_set.stats[name].tobytes()
    assert loaded.labels == feature_set.labels
    assert loaded.metadata == json.loads(json.dumps(feature_set.metadata))
    assert loaded.metadata["stats_n_tokens"] == 1234 and loaded.metadata["layer"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["features.safetensors"]  # no temporary file left


def test_features_carry_their_vectors_stats_and_label(feature_set, tiny_sae):
    feature = feature_set[3]
    assert isinstance(feature, SAEFeature) and feature.index == 3 and feature.label == "golden things ✨"
    np.testing.assert_array_equal(np.array(feature.decoder), np.array(tiny_sae.W_dec[3]))
    np.testing.assert_array_equal(np.array(feature.encoder), np.array(tiny_sae.W_enc[3]))
    assert feature.stats["frequency"] == feature_set.stats["frequency"][3]
    assert feature_set[-1].index == len(feature_set) - 1 == tiny_sae.d_hidden - 1
    assert sum(1 for _ in feature_set) == len(feature_set)
    with pytest.raises(IndexError, match="out of range for 128 features"):
        feature_set[128]


def test_corrupt_foreign_and_missing_files_are_refused(feature_set, tmp_path):
    path = tmp_path / "features.safetensors"
    feature_set.save(path)
    damaged = tmp_path / "damaged.safetensors"
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0xFF
    damaged.write_bytes(bytes(raw))
    with pytest.raises(SAEError, match="corrupt"):
        FeatureSet.load(damaged)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[:200])
    with pytest.raises(SAEError, match="not a readable safetensors file"):
        FeatureSet.load(truncated)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"decoder": np.zeros((2, 3), np.float32)}, str(foreign))
    with pytest.raises(SAEError, match="not an mlxterp feature set file"):
        FeatureSet.load(foreign)
    with pytest.raises(SAEError, match="no feature set file"):
        FeatureSet.load(tmp_path / "absent.safetensors")


def test_invalid_contents_are_refused(tiny_sae):
    with pytest.raises(SAEError, match="stats must be a FeatureStats"):
        FeatureSet.from_sae(tiny_sae, {"frequency": np.zeros(3)})
    with pytest.raises(SAEError, match="one value per feature"):
        FeatureSet(tiny_sae.W_dec, stats={"frequency": np.zeros(3)})
    with pytest.raises(SAEError, match="labels must be a list of 128"):
        FeatureSet.from_sae(tiny_sae, labels=["x"])
    with pytest.raises(SAEError, match="n_features, d_model"):
        FeatureSet(np.zeros(5))
