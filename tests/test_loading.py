"""load_model dispatch: default, (model, tokenizer) pairs, GGUF paths, folders, repo ids, errors."""

import json

import pytest
from mlx_lm.models import llama
from mlx_lm.tokenizer_utils import TokenizerWrapper

from mlxterp.errors import ModelLoadError
from mlxterp.loading import LoadedModel, load_model
from test_gguf import tiny_args, write_tiny_gguf


@pytest.fixture
def tiny_gguf(tmp_path):
    write_tiny_gguf(tmp_path / "tiny.gguf")
    return tmp_path / "tiny.gguf"


def test_pair_is_kept_as_is(tiny_gguf):
    gguf = load_model(tiny_gguf)
    model, tokenizer = gguf.model, gguf.tokenizer
    loaded = load_model((model, tokenizer))
    assert isinstance(loaded, LoadedModel)
    assert loaded.model is model and loaded.tokenizer is tokenizer
    assert loaded.name == "llama"


def test_pair_with_raw_hf_tokenizer_gets_a_wrapper(tiny_gguf):
    gguf = load_model(tiny_gguf)
    loaded = load_model((gguf.model, gguf.tokenizer._tokenizer), name="mine")
    assert isinstance(loaded.tokenizer, TokenizerWrapper)
    assert loaded.tokenizer.encode("hello") == gguf.tokenizer.encode("hello")
    assert loaded.name == "mine"


def test_bad_pairs_are_refused():
    with pytest.raises(ModelLoadError, match="must be \\(model, tokenizer\\)"):
        load_model(("not a model", None))
    with pytest.raises(ModelLoadError, match="TokenizerWrapper or a Hugging Face tokenizer"):
        load_model((llama.Model(tiny_args(tie=True)), 42))


def test_gguf_path_and_name(tiny_gguf):
    loaded = load_model(str(tiny_gguf))
    assert loaded.name == "tiny llama"
    assert loaded.tokenizer.decode(loaded.tokenizer.encode("the cat")) == "the cat"


def test_gguf_magic_decides_not_the_suffix(tiny_gguf):
    renamed = tiny_gguf.rename(tiny_gguf.with_name("weights.bin"))
    assert load_model(renamed).name == "tiny llama"


def test_file_that_is_neither_gguf_nor_a_folder_is_refused(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(ModelLoadError, match="neither a GGUF file"):
        load_model(path)


def test_folder_without_config_is_refused_and_names_its_gguf(tiny_gguf):
    with pytest.raises(ModelLoadError, match="no config.json.*tiny.gguf"):
        load_model(tiny_gguf.parent)


def test_incomplete_mlx_lm_folder_gives_a_load_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ModelLoadError, match="Could not load the mlx-lm model folder"):
        load_model(tmp_path)


def test_missing_gguf_path_is_refused(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(tmp_path / "absent.gguf")


def test_unreachable_repo_gives_a_hub_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="from the Hugging Face hub"):
        load_model("mlxterp-test/no-such-model")


def test_unknown_spec_type_is_refused():
    with pytest.raises(ModelLoadError, match="Cannot load a model from a int"):
        load_model(3)


@pytest.mark.slow
def test_default_spec(default_model_pair):
    assert default_model_pair.name == "SmolLM2-135M-Instruct"
    assert isinstance(default_model_pair.tokenizer, TokenizerWrapper)
