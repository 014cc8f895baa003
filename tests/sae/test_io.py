"""SAE files: bit-identical round trips; foreign, truncated, corrupt and half-written files refused."""

import json
import os

import mlx.core as mx
import numpy as np
import pytest
from safetensors.numpy import save_file

import mlxterp.sae.io as sae_io
from mlxterp.errors import SAEError
from mlxterp.sae.model import SAE


def trained_like_sae(architecture="topk", tied=False, normalization="expected_norm"):
    sae = SAE(8, 32, k=4, architecture=architecture, tied_weights=tied, normalization=normalization, seed=1)
    x = mx.random.normal((64, 8), key=mx.random.key(2)) * 3 + 1
    sae.fit_normalization(x)
    sae.initialize_geometric_median(x)
    sae.b_enc = mx.random.normal((32,), key=mx.random.key(3)) * 0.1
    sae.threshold = mx.array(0.05)
    sae.metadata.update(layer=3, component="mlp", model_name="tiny", training={"steps": 10})
    return sae, x


@pytest.mark.parametrize("architecture, tied, normalization", [
    ("topk", False, "expected_norm"), ("topk", True, "none"), ("batchtopk", False, "standardize"),
    ("relu", True, "unit_norm"),
])
def test_round_trip_is_bit_identical(tmp_path, architecture, tied, normalization):
    sae, x = trained_like_sae(architecture, tied, normalization)
    path = tmp_path / "my_sae.mlx"
    sae.save(path)
    loaded = SAE.load(path)
    assert path.is_file() and loaded.metadata["layer"] == 3 and loaded.metadata["training"] == {"steps": 10}
    assert loaded.metadata["library_version"]
    for (name, a), (_, b) in zip(sorted(sae.parameters().items()), sorted(loaded.parameters().items())):
        assert name in ("norm_stats",) or np.array_equal(np.array(a), np.array(b)), name
    np.testing.assert_array_equal(np.array(loaded(x)), np.array(sae(x)))
    np.testing.assert_array_equal(np.array(loaded.encode(x)), np.array(sae.encode(x)))
    assert (loaded.architecture, loaded.tied_weights, loaded.normalization) == (architecture, tied, normalization)


def test_overwrite_and_any_suffix(tmp_path):
    sae, x = trained_like_sae()
    for name in ("a.safetensors", "b", "c.mlx"):
        sae.save(tmp_path / name)
        sae.save(tmp_path / name)
        np.testing.assert_array_equal(np.array(SAE.load(tmp_path / name)(x)), np.array(sae(x)))
    assert sorted(os.listdir(tmp_path)) == ["a.safetensors", "b", "c.mlx"]


def test_truncated_file_is_refused(tmp_path):
    sae, _ = trained_like_sae()
    path = tmp_path / "sae.mlx"
    sae.save(path)
    data = path.read_bytes()
    for cut in (len(data) - 100, 40, 4):
        path.write_bytes(data[:cut])
        with pytest.raises(SAEError, match="truncated or corrupt"):
            SAE.load(path)


def test_corrupt_tensor_bytes_fail_the_checksum(tmp_path):
    sae, _ = trained_like_sae()
    path = tmp_path / "sae.mlx"
    sae.save(path)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(SAEError, match="checksum"):
        SAE.load(path)


def test_failed_save_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    sae, x = trained_like_sae()
    path = tmp_path / "sae.mlx"
    sae.save(path)
    good = path.read_bytes()

    def half_write(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(sae_io, "save_file", half_write)
    sae.b_dec = sae.b_dec + 1
    with pytest.raises(OSError, match="disk full"):
        sae.save(path)
    assert path.read_bytes() == good
    assert os.listdir(tmp_path) == ["sae.mlx"]
    with pytest.raises(OSError):
        sae.save(tmp_path / "new.mlx")
    assert os.listdir(tmp_path) == ["sae.mlx"]


def test_foreign_files_are_refused(tmp_path):
    foreign = tmp_path / "other.safetensors"
    save_file({"W_enc": np.zeros((32, 8), np.float32)}, str(foreign))
    with pytest.raises(SAEError, match="not an mlxterp SAE file"):
        SAE.load(foreign)
    text = tmp_path / "notes.mlx"
    text.write_text("hello")
    with pytest.raises(SAEError, match="not a readable safetensors"):
        SAE.load(text)
    with pytest.raises(SAEError, match="no SAE file"):
        SAE.load(tmp_path / "missing.mlx")
    with pytest.raises(SAEError, match="directory"):
        SAE.load(tmp_path)


def rewrite(path, tensors=None, **header_changes):
    """Re-save `path` with edited tensors/header (and a matching checksum)."""
    from safetensors import safe_open
    from safetensors.numpy import load_file

    with safe_open(str(path), "numpy") as f:
        meta = dict(f.metadata())
    arrays = tensors if tensors is not None else load_file(str(path))
    meta.update(header_changes)
    meta["checksum"] = sae_io.checksum(arrays, meta)
    save_file(arrays, str(path), metadata=meta)


def test_wrong_version_missing_keys_and_shapes_are_refused(tmp_path):
    sae, _ = trained_like_sae()
    path = tmp_path / "sae.mlx"
    sae.save(path)
    from safetensors.numpy import load_file

    arrays = load_file(str(path))
    rewrite(path, format_version="99")
    with pytest.raises(SAEError, match="newer than this mlxterp"):
        SAE.load(path)
    sae.save(path)
    rewrite(path, {k: v for k, v in arrays.items() if k != "b_enc"})
    with pytest.raises(SAEError, match=r"missing \['b_enc'\]"):
        SAE.load(path)
    sae.save(path)
    rewrite(path, {**arrays, "b_enc": np.zeros(31, np.float32)})
    with pytest.raises(SAEError, match="b_enc has shape"):
        SAE.load(path)
    sae.save(path)
    rewrite(path, sae=json.dumps({"d_model": 8}))
    with pytest.raises(SAEError, match="invalid SAE description"):
        SAE.load(path)


def test_unjsonable_metadata_is_refused_before_writing(tmp_path):
    sae, _ = trained_like_sae()
    sae.metadata["thing"] = object()
    with pytest.raises(SAEError, match="JSON"):
        sae.save(tmp_path / "sae.mlx")
    assert os.listdir(tmp_path) == []


def edit_header(path, **changes):
    """Change header entries in place, leaving the checksum as it was (a hand edit)."""
    from safetensors import safe_open
    from safetensors.numpy import load_file

    with safe_open(str(path), "numpy") as f:
        meta = dict(f.metadata())
    arrays = load_file(str(path))
    meta.update(changes)
    save_file(arrays, str(path), metadata=meta)
    return arrays, meta


def test_an_edited_header_fails_the_checksum(tmp_path):
    sae, _ = trained_like_sae()
    path = tmp_path / "sae.mlx"
    sae.save(path)
    spec = json.loads(edit_header(path)[1]["sae"])
    assert SAE.load(path).k == 4
    edit_header(path, sae=json.dumps(dict(spec, k=2)))
    with pytest.raises(SAEError, match=r"corrupt or was edited: its tensors or header \(metadata\) do not match"):
        SAE.load(path)
    sae.save(path)
    metadata = json.loads(edit_header(path)[1]["metadata"])
    edit_header(path, metadata=json.dumps(dict(metadata, layer=7)))
    with pytest.raises(SAEError, match="checksum"):
        SAE.load(path)
    # Dropping checksum_version does not downgrade the file to the tensors-only check.
    sae.save(path)
    arrays, meta = edit_header(path, metadata=json.dumps(dict(metadata, layer=7)))
    del meta["checksum_version"]
    save_file(arrays, str(path), metadata=meta)
    with pytest.raises(SAEError, match="checksum"):
        SAE.load(path)


def test_files_from_before_the_header_checksum_still_load(tmp_path):
    sae, x = trained_like_sae()
    path = tmp_path / "sae.mlx"
    sae.save(path)
    arrays, meta = edit_header(path)
    del meta["checksum_version"]
    meta["checksum"] = sae_io.checksum(arrays)  # version 1: the tensors only
    save_file(arrays, str(path), metadata=meta)
    loaded = SAE.load(path)
    assert loaded.k == 4 and loaded.metadata["layer"] == 3
    assert np.array_equal(np.array(loaded.encode(x)), np.array(sae.encode(x)))
    edit_header(path, checksum_version="3")
    with pytest.raises(SAEError, match="checksum version '3'.*upgrade mlxterp"):
        SAE.load(path)
