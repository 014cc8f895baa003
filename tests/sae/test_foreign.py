"""Foreign SAEs in and out, without torch: fixtures written by SAELens, sparsify and the Gemma Scope
tutorial code (scripts/make_foreign_sae_fixtures.py) give the libraries' own codes and
reconstructions of a fixed input; mlxterp must match them."""

import json
import shutil
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from mlxterp import InterpretableModel, load_sae
from mlxterp.errors import SAEError
from mlxterp.hookpoint import HookPoint
from mlxterp.sae.formats.hooknames import parse_hook_name
from mlxterp.sae.model import SAE
from tiny_models import byte_tokenizer, tiny_model

FIXTURES = Path(__file__).parent / "fixtures" / "foreign"
GEMMA = "gemma-scope-2b-pt-res/layer_3/width_64/average_l0_20"
# fixture folder, load_sae keyword arguments, expected architecture and hook point (layer, component)
CASES = [
    ("saelens_standard", {}, "relu", (1, "output")),          # blocks.2.hook_resid_pre, no b_dec on input, rescaled
    ("saelens_topk", {}, "topk", (1, "mlp")),                  # blocks.1.hook_mlp_out
    ("saelens_topk_rescaled", {}, "topk", (0, "attn")),        # blocks.0.hook_attn_out, acts scaled by ||W_dec||
    ("saelens_jumprelu", {}, "jumprelu", (3, "output")),       # blocks.3.hook_resid_post
    ("saelens_gated", {}, "jumprelu", (2, "mlp")),             # blocks.2.hook_mlp_out, gated = JumpReLU exactly
    ("sparsify_single/layers.2", {}, "topk", (2, "output")),
    ("sparsify_run", {"hookpoint": "layers.1"}, "topk", (1, "output")),
    ("sparsify_run", {"hookpoint": "layers.1.mlp"}, "topk", (1, "mlp")),
    (GEMMA, {}, "jumprelu", (3, "output")),
]


def rel_err(a, b):
    return float(np.max(np.abs(np.asarray(a) - b)) / np.max(np.abs(b)))


@pytest.mark.parametrize("folder, kwargs, architecture, point", CASES, ids=lambda c: str(c))
def test_foreign_sae_gives_the_librarys_codes_and_reconstructions(folder, kwargs, architecture, point):
    expected_dir = FIXTURES / folder / kwargs.get("hookpoint", "")
    expected = np.load(expected_dir / "expected.npz", allow_pickle=False)
    sae = load_sae(FIXTURES / folder, **kwargs)
    assert sae.architecture == architecture and (sae.d_model, sae.d_hidden) == (16, 64)
    assert (sae.hook_point.layer, sae.hook_point.component) == point
    x = mx.array(expected["x"])
    codes, recon = np.array(sae.encode(x)), np.array(sae(x))
    assert (expected["codes"] > 0).sum() > 0
    assert np.array_equal(codes > 0, expected["codes"] > 0)
    assert rel_err(codes, expected["codes"]) <= 1e-5
    assert rel_err(recon, expected["recon"]) <= 1e-5
    np.testing.assert_allclose(np.array(sae.decode(mx.array(codes), sae.token_norm(x))), recon, rtol=1e-5, atol=1e-5)


def test_foreign_metadata_is_kept():
    sae = load_sae(FIXTURES / "saelens_topk")
    assert sae.metadata["source"]["model_name"] == "tiny-model"
    assert sae.metadata["source"]["hook_name"] == "blocks.1.hook_mlp_out" and sae.metadata["context_length"] == 128
    assert sae.k == 6 and sae.metadata["model_name"] is None  # foreign model names are not mlx-lm names
    run = load_sae(FIXTURES / "sparsify_run", hookpoint="layers.1.mlp")
    assert run.metadata["source"]["model_name"] == "tiny-model" and run.metadata["context_length"] == 64
    assert load_sae(FIXTURES / "saelens_standard").normalization == "unit_norm"


def test_a_layer_or_component_other_than_the_files_is_refused_without_a_model_too():
    with pytest.raises(SAEError, match="trained on component 'mlp', not 'attn'"):
        load_sae(FIXTURES / "saelens_topk", layer=1, component="attn")
    assert load_sae(FIXTURES / "saelens_topk", layer=1, component="attn", strict=False).hook_point.component == "mlp"
    assert load_sae(FIXTURES / GEMMA, layer=3, component="output").hook_point.layer == 3


def test_a_weights_file_stands_for_its_folder():
    a = load_sae(FIXTURES / "saelens_jumprelu" / "sae_weights.safetensors")
    b = load_sae(FIXTURES / GEMMA / "params.npz")
    assert a.architecture == b.architecture == "jumprelu"


def test_sparsify_run_needs_a_hookpoint():
    with pytest.raises(SAEError, match=r"choose one.*hookpoint='layers.1'") as err:
        load_sae(FIXTURES / "sparsify_run")
    assert "layers.1.mlp" in str(err.value)
    with pytest.raises(SAEError, match="no SAE for hook point 'layers.7'"):
        load_sae(FIXTURES / "sparsify_run", hookpoint="layers.7")
    with pytest.raises(SAEError, match="holds one SAE"):
        load_sae(FIXTURES / "saelens_topk", hookpoint="layers.1")


@pytest.mark.parametrize("name, point", [
    ("blocks.5.hook_resid_post", (5, "output")), ("blocks.5.hook_resid_pre", (4, "output")),
    ("blocks.5.hook_mlp_out", (5, "mlp")), ("blocks.5.hook_attn_out", (5, "attn")),
    ("layers.5", (5, "output")), ("layers.5.mlp", (5, "mlp")), ("layers.5.self_attn", (5, "attn")),
    ("model.layers.12.mlp", (12, "mlp")),
])
def test_hook_names_map_to_hook_points(name, point):
    assert parse_hook_name(name) == point


@pytest.mark.parametrize("name, message", [
    ("blocks.0.hook_resid_pre", "embeddings"), ("blocks.3.attn.hook_z", "attention heads"),
    ("blocks.3.hook_resid_mid", "between attention and MLP"), ("transformer.h.3", "unknown hook name"),
    ("layers.3.mlp.down_proj", "unknown hook name"),
])
def test_unmapped_hook_names_are_refused(name, message):
    with pytest.raises(SAEError, match=message):
        parse_hook_name(name)


# -- writing -------------------------------------------------------------------------------------
def exported_sae(architecture="topk", normalization="expected_norm", d_model=16):
    sae = SAE(d_model, 64, k=6, architecture=architecture, normalization=normalization, seed=3)
    rng = np.random.default_rng(9)
    sae.b_enc = mx.array(rng.standard_normal(64).astype(np.float32) * 0.2)
    sae.b_dec = mx.array(rng.standard_normal(d_model).astype(np.float32) * 0.2)
    sae.fit_normalization(mx.array(rng.standard_normal((80, d_model)).astype(np.float32)) * 2 + 1)
    if architecture == "batchtopk":
        sae.threshold = mx.array(0.4)
    sae.hook_point = HookPoint(2, "mlp", "model.layers.2.mlp")
    sae.metadata.update(model_name="tiny-model", context_length=128)
    return sae


@pytest.mark.parametrize("architecture, normalization, fmt", [
    ("topk", "expected_norm", "saelens"), ("relu", "standardize", "saelens"), ("batchtopk", "none", "saelens"),
    ("topk", "standardize", "sparsify"),
])
def test_export_loads_back_with_the_same_codes(tmp_path, architecture, normalization, fmt):
    sae = exported_sae(architecture, normalization)
    sae.save(tmp_path / "out", format=fmt)
    back = load_sae(tmp_path / "out")
    x = mx.array(np.random.default_rng(1).standard_normal((30, 16)).astype(np.float32) * 3)
    codes, ours = np.array(back.encode(x)), np.array(sae.encode(x))
    assert ours.any() and np.array_equal(codes > 0, ours > 0) and rel_err(codes, ours) <= 1e-5
    assert rel_err(np.array(back(x)), np.array(sae(x))) <= 1e-5
    assert back.architecture == ("jumprelu" if architecture == "batchtopk" else architecture)
    assert back.hook_point == HookPoint(2, "mlp", "") and back.metadata["context_length"] == 128


def test_saelens_config_records_hook_model_context_and_normalization(tmp_path):
    exported_sae().save(tmp_path / "s", format="saelens")
    cfg = json.loads((tmp_path / "s" / "cfg.json").read_text())
    assert (cfg["architecture"], cfg["d_in"], cfg["d_sae"], cfg["k"]) == ("topk", 16, 64, 6)
    assert cfg["normalize_activations"] == "none" and cfg["apply_b_dec_to_input"] is True
    meta = cfg["metadata"]
    assert (meta["hook_name"], meta["model_name"], meta["context_size"]) == ("blocks.2.hook_mlp_out", "tiny-model", 128)
    assert meta["mlxterp_normalization_folded"]["scheme"] == "expected_norm"
    assert load_file(str(tmp_path / "s" / "sae_weights.safetensors"))["W_enc"].shape == (16, 64)
    exported_sae().save(tmp_path / "p", format="sparsify")
    cfg = json.loads((tmp_path / "p" / "cfg.json").read_text())
    assert (cfg["hookpoint"], cfg["model"], cfg["ctx_len"], cfg["d_in"], cfg["k"]) == ("layers.2.mlp", "tiny-model", 128, 16, 6)


def test_export_refusals(tmp_path):
    with pytest.raises(SAEError, match="format='nope' is not one mlxterp writes"):
        exported_sae().save(tmp_path / "x", format="nope")
    with pytest.raises(SAEError, match="sparsify reads TopK SAEs only"):
        exported_sae("relu").save(tmp_path / "x", format="sparsify")
    with pytest.raises(SAEError, match="unit_norm"):
        exported_sae("topk", "unit_norm").save(tmp_path / "x", format="saelens")
    assert not (tmp_path / "x").exists()


# -- bad input -----------------------------------------------------------------------------------
def copy_fixture(tmp_path, name):
    return Path(shutil.copytree(FIXTURES / name, tmp_path / Path(name).name))


def edit_cfg(folder, **changes):
    cfg = json.loads((folder / "cfg.json").read_text())
    cfg.update(changes)
    (folder / "cfg.json").write_text(json.dumps(cfg))


def test_unknown_folder_lists_the_known_formats(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(SAEError, match=r"no SAE format mlxterp knows.*saelens \(cfg.json \+ sae_weights.safetensors\)"
                                       r".*sparsify.*gemma-scope"):
        load_sae(tmp_path)


def test_unsupported_architecture_and_normalization_are_refused(tmp_path):
    folder = copy_fixture(tmp_path, "saelens_standard")
    edit_cfg(folder, architecture="matryoshka_batchtopk")
    with pytest.raises(SAEError, match="architecture 'matryoshka_batchtopk' is not supported.*standard, topk, jumprelu, gated"):
        load_sae(folder)
    edit_cfg(folder, architecture="standard", normalize_activations="layer_norm")
    with pytest.raises(SAEError, match="normalize_activations='layer_norm' is not supported"):
        load_sae(folder)
    sp = copy_fixture(tmp_path, "sparsify_single/layers.2")
    edit_cfg(sp, activation="groupmax")
    with pytest.raises(SAEError, match="activation 'groupmax' is not supported"):
        load_sae(sp)
    edit_cfg(sp, activation="topk", transcode=True)
    with pytest.raises(SAEError, match="transcoder"):
        load_sae(sp)


def test_shapes_disagreeing_with_the_config_are_refused(tmp_path):
    folder = copy_fixture(tmp_path, "saelens_topk")
    edit_cfg(folder, d_sae=32)
    with pytest.raises(SAEError, match=r"W_enc has shape \(16, 64\) but .*says \(16, 32\)"):
        load_sae(folder)
    sp = copy_fixture(tmp_path, "sparsify_single/layers.2")
    edit_cfg(sp, d_in=8)
    with pytest.raises(SAEError, match=r"encoder.weight has shape \(64, 16\)"):
        load_sae(sp)


def test_gated_sae_reads_as_jumprelu_and_needs_its_gate(tmp_path):
    sae = load_sae(FIXTURES / "saelens_gated")
    assert sae.metadata["source"]["architecture"] == "gated"
    threshold = np.array(sae.threshold)
    assert (threshold < 0).any() and (threshold > 0).any()  # both signs of b_mag - exp(r_mag) * b_gate occur
    folder = copy_fixture(tmp_path, "saelens_gated")
    tensors = load_file(str(folder / "sae_weights.safetensors"))
    del tensors["b_gate"]
    save_file(tensors, str(folder / "sae_weights.safetensors"))
    with pytest.raises(SAEError, match=r"lacks tensor\(s\) \['b_gate'\]"):
        load_sae(folder)


def test_jumprelu_without_threshold_is_refused(tmp_path):
    folder = copy_fixture(tmp_path, "saelens_jumprelu")
    tensors = load_file(str(folder / "sae_weights.safetensors"))
    del tensors["threshold"]
    save_file(tensors, str(folder / "sae_weights.safetensors"))
    with pytest.raises(SAEError, match="per-latent 'threshold'"):
        load_sae(folder)
    gs = tmp_path / "gs"
    gs.mkdir()
    params = dict(np.load(FIXTURES / GEMMA / "params.npz", allow_pickle=False))
    del params["threshold"]
    np.savez(gs / "params.npz", **params)
    with pytest.raises(SAEError, match="no 'threshold' tensor"):
        load_sae(gs)


def test_pickled_npz_is_never_unpickled(tmp_path):
    folder = tmp_path / "gs"
    folder.mkdir()
    params = dict(np.load(FIXTURES / GEMMA / "params.npz", allow_pickle=False))
    params["W_enc"] = np.array([object()] * 3, dtype=object)
    np.savez(folder / "params.npz", **params)
    with pytest.raises(SAEError, match="pickled objects"):
        load_sae(folder)


@pytest.fixture(scope="module")
def tiny():
    return InterpretableModel((tiny_model("llama", seed=2), byte_tokenizer()), name="tiny-llama")


def test_width_mismatching_the_hook_point_is_refused(tiny):
    with pytest.raises(SAEError, match="16-dimensional activations but the model has d_model 64"):
        tiny.load_sae(FIXTURES / GEMMA)
    with pytest.raises(SAEError, match="16-dimensional"):
        load_sae(FIXTURES / "saelens_topk", model=tiny, layer=1, component="mlp")


def test_foreign_sae_on_a_model_takes_or_checks_its_hook_point(tiny, tmp_path):
    sae = exported_sae(d_model=64)
    sae.save(tmp_path / "s", format="saelens")
    loaded = tiny.load_sae(tmp_path / "s")
    assert loaded.hook_point == tiny.hook_point(2, "mlp") and loaded.attached_model is tiny
    with pytest.raises(SAEError, match="trained on layer 2, not layer 1"):
        tiny.load_sae(tmp_path / "s", layer=1, component="mlp")
    # A Gemma Scope folder outside its release tree names no hook point: the caller says where.
    gs = tmp_path / "plain"
    gs.mkdir()
    rng = np.random.default_rng(0)
    np.savez(gs / "params.npz", W_enc=rng.standard_normal((64, 32)).astype(np.float32),
             W_dec=rng.standard_normal((32, 64)).astype(np.float32), b_enc=np.zeros(32, np.float32),
             b_dec=np.zeros(64, np.float32), threshold=np.full(32, 0.1, np.float32))
    assert load_sae(gs).hook_point is None
    with pytest.raises(SAEError, match="names no layer"):
        tiny.load_sae(gs, layer=1)
    placed = tiny.load_sae(gs, layer=1, component="attn")
    assert placed.hook_point == tiny.hook_point(1, "attn")
    big = tmp_path / "big"
    shutil.copytree(tmp_path / "s", big)
    edit_cfg(big, metadata={**json.loads((big / "cfg.json").read_text())["metadata"], "hook_name": "blocks.9.hook_mlp_out"})
    with pytest.raises(SAEError, match="reads layer 9, but 'tiny-llama' has 3 layers"):
        tiny.load_sae(big)


# -- the hub -------------------------------------------------------------------------------------
def test_hub_release_offline_says_what_to_do(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # never download in tests
    with pytest.raises(SAEError, match=r"could not fetch google/gemma-scope-2b-pt-res/layer_12/width_16k/average_l0_82"
                                       r" from the Hugging Face hub.*download the folder yourself"):
        load_sae("gemma-scope-2b-pt-res-canonical", "layer_12/width_16k/canonical")
    with pytest.raises(SAEError, match="has no SAE id 'layer_99/width_16k/canonical'.*layer_0/width_16k/canonical"):
        load_sae("gemma-scope-2b-pt-res-canonical", sae_id="layer_99/width_16k/canonical")
    with pytest.raises(SAEError, match="no SAE file at runs/missing.mlx"):
        load_sae("runs/missing.mlx")


def test_hub_release_downloads_only_its_folder(tmp_path, monkeypatch):
    import huggingface_hub

    calls = []
    snapshot = tmp_path / "models--google--gemma-scope-2b-pt-res" / "snapshots" / "abc"

    def fake_snapshot_download(repo_id, allow_patterns=None):
        calls.append((repo_id, allow_patterns))
        shutil.copytree(FIXTURES / GEMMA, snapshot / "layer_3" / "width_16k" / "average_l0_59")
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    sae = load_sae("gemma-scope-2b-pt-res-canonical", "layer_3/width_16k/canonical")
    assert calls == [("google/gemma-scope-2b-pt-res", ["layer_3/width_16k/average_l0_59/*"])]
    assert sae.hook_point == HookPoint(3, "output", "") and sae.architecture == "jumprelu"
    assert sae.metadata["source"]["model_name"] == "gemma-2-2b"
    assert sae.metadata["source"]["sae_id"] == "layer_3/width_16k/canonical"
    tiny = InterpretableModel((tiny_model("llama", seed=2), byte_tokenizer()))
    shutil.rmtree(snapshot)
    with pytest.raises(SAEError, match="16-dimensional activations but the model has d_model 64"):
        tiny.load_sae("gemma-scope-2b-pt-res-canonical", "layer_3/width_16k/canonical")


def test_sublayer_saes_of_post_norm_models_are_refused(tmp_path):
    gemma2 = InterpretableModel((tiny_model("gemma2", seed=1), byte_tokenizer()), name="tiny-gemma2")
    exported_sae(d_model=64).save(tmp_path / "mlp", format="saelens")  # blocks.2.hook_mlp_out
    with pytest.raises(SAEError, match="after the post-sublayer norm of 'tiny-gemma2'"):
        gemma2.load_sae(tmp_path / "mlp")
    assert gemma2.load_sae(tmp_path / "mlp", strict=False).hook_point == gemma2.hook_point(2, "mlp")
    resid = exported_sae(d_model=64)
    resid.hook_point = HookPoint(2, "output", "")
    resid.save(tmp_path / "resid", format="saelens")
    assert gemma2.load_sae(tmp_path / "resid").hook_point == gemma2.hook_point(2, "output")
    llama = InterpretableModel((tiny_model("llama", seed=1), byte_tokenizer()))
    assert llama.load_sae(tmp_path / "mlp").hook_point == llama.hook_point(2, "mlp")


def test_bfloat16_weights_and_pre_6_saelens_configs_load(tmp_path):
    folder = copy_fixture(tmp_path, "saelens_topk")
    weights = folder / "sae_weights.safetensors"
    tensors = mx.load(str(weights))
    mx.save_safetensors(str(weights), {k: v.astype(mx.bfloat16) for k, v in tensors.items()})
    # SAELens before 6.0: flat keys, hook_point, activation_fn_str + activation_fn_kwargs, a bool normalization.
    (folder / "cfg.json").write_text(json.dumps({
        "d_in": 16, "d_sae": 64, "dtype": "bfloat16", "hook_point": "blocks.1.hook_mlp_out", "hook_point_layer": 1,
        "model_name": "tiny-model", "context_size": 128, "activation_fn_str": "topk",
        "activation_fn_kwargs": {"k": 6}, "normalize_activations": False, "apply_b_dec_to_input": True}))
    sae = load_sae(folder)
    assert (sae.architecture, sae.k, sae.W_enc.dtype) == ("topk", 6, mx.float32)
    assert sae.hook_point == HookPoint(1, "mlp", "") and sae.metadata["source"]["model_name"] == "tiny-model"
    rounded = {k: np.array(v.astype(mx.bfloat16).astype(mx.float32)) for k, v in tensors.items()}
    np.testing.assert_array_equal(np.array(sae.W_enc), rounded["W_enc"].T)
    expected = np.load(FIXTURES / "saelens_topk" / "expected.npz", allow_pickle=False)
    assert rel_err(np.array(sae(mx.array(expected["x"]))), expected["recon"]) < 2e-2  # bfloat16 rounding


def test_truncated_weights_are_refused(tmp_path):
    folder = copy_fixture(tmp_path, "sparsify_single/layers.2")
    data = (folder / "sae.safetensors").read_bytes()
    (folder / "sae.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(SAEError, match="not a readable safetensors file"):
        load_sae(folder)
