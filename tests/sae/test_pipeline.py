"""model.train_sae / model.load_sae on a tiny model: metadata, validation, caching, wrong-model errors."""

import dataclasses

import mlx.core as mx
import numpy as np
import pytest

from mlxterp import InterpretableModel
from mlxterp.errors import DataError, SAEError, TraceError
from mlxterp.sae.config import SAEConfig
from mlxterp.sae.model import SAE
from mlxterp.activations import ActivationStore, ContextSettings
from mlxterp.data import split_documents
from mlxterp.sae.train import INIT_TOKENS
from tiny_models import byte_tokenizer, tiny_model

TEXTS = [f"document {i}: " + "some words here and there " * (3 + i % 5) for i in range(120)]
CONFIG = SAEConfig(expansion_factor=4, k=8, batch_size=256, context_length=64, num_epochs=2)


@pytest.fixture(scope="module")
def model():
    return InterpretableModel((tiny_model("llama", seed=4), byte_tokenizer()), name="tiny-llama")


@pytest.fixture(scope="module")
def trained(model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("sae")
    path = folder / "my_sae.mlx"
    sae = model.train_sae(layer=1, dataset=TEXTS, component="mlp", config=CONFIG, save_path=str(path),
                          cache_dir=folder / "cache", progress=False)
    return sae, path


def test_train_sae_records_where_it_was_trained(trained, model):
    sae, path = trained
    meta = sae.metadata
    assert (meta["model_name"], meta["layer"], meta["component"]) == ("tiny-llama", 1, "mlp")
    assert meta["hook_point"] == {"layer": 1, "component": "mlp", "path": "model.layers.1.mlp"}
    assert trained[0].hook_point == model.hook_point(1, "mlp")
    assert meta["model_fingerprint"] == model.fingerprint
    assert meta["drop_first_tokens"] == 1
    assert meta["n_val_documents"] == 6
    final = meta["training"]["final_metrics"]
    assert final["val/explained_variance"] > 0.5
    assert final["l0"] == pytest.approx(8.0)
    assert path.exists()


def test_tokens_above_the_norm_limit_are_left_out(trained, model):
    meta = trained[0].metadata
    train_texts, _ = split_documents(TEXTS, CONFIG.validation_split, CONFIG.seed)
    store = ActivationStore(model, train_texts, model.hook_point(1, "mlp"), ContextSettings(context_length=64),
                            progress=False)
    sample_norms = np.linalg.norm(np.asarray(store.sample(INIT_TOKENS)), axis=1)
    assert meta["max_norm_ratio"] == 10.0
    assert meta["max_token_norm"] == pytest.approx(10 * np.median(sample_norms), rel=1e-5)

    tight = dataclasses.replace(CONFIG, num_epochs=1, max_norm_ratio=1.05)
    sae = model.train_sae(layer=1, dataset=TEXTS, component="mlp", config=tight, progress=False)
    assert sae.metadata["max_token_norm"] == pytest.approx(1.05 * np.median(sample_norms), rel=1e-5)
    fraction = sae.metadata["norm_outlier_fraction"]
    assert fraction == pytest.approx((sample_norms > sae.metadata["max_token_norm"]).mean())
    assert 0.1 < fraction < 0.5
    val_tokens = lambda s: s.metadata["training"]["final_metrics"]["val/n_tokens"]  # noqa: E731
    assert val_tokens(sae) < val_tokens(trained[0])


def test_seed_003_snippet_encode_decode(trained, model):
    _, path = trained
    sae = model.load_sae(str(path))
    assert sae.is_compatible(model, layer=1, component="mlp")
    assert not sae.is_compatible(model, layer=0, component="mlp")
    with model.trace("Test input") as trace:
        pass
    activation = trace.activations["model.layers.1.mlp"]
    features = sae.encode(activation)
    assert features.shape == (1, len("Test input"), sae.d_hidden)
    assert int(mx.sum(features[0, -1] != 0)) == 8
    reconstructed = sae.decode(features)
    assert reconstructed.shape == activation.shape


def test_load_refuses_another_layer_or_model(trained, model):
    _, path = trained
    with pytest.raises(SAEError, match="trained on layer 1, not layer 0"):
        model.load_sae(str(path), layer=0)
    with pytest.raises(SAEError, match="trained on component 'mlp', not 'attn'"):
        model.load_sae(str(path), component="attn")
    other = InterpretableModel((tiny_model("llama", seed=5), byte_tokenizer()), name="other-model")
    with pytest.raises(SAEError, match="trained on another model .'tiny-llama', fingerprint"):
        other.load_sae(str(path))
    assert other.load_sae(str(path), strict=False).d_model == other.d_model
    # Identity is the weights, not the name: another llama under the same name is refused,
    # the same weights under another name are accepted.
    namesake = InterpretableModel((tiny_model("llama", seed=5), byte_tokenizer()), name=model.name)
    with pytest.raises(SAEError, match="trained on another model"):
        namesake.load_sae(str(path))
    renamed = InterpretableModel((model.model, model.tokenizer), name="Tiny Llama Q4")
    assert renamed.load_sae(str(path)).attached_model is renamed
    assert trained[0].is_compatible(renamed, layer=1, component="mlp")
    assert not trained[0].is_compatible(namesake)



def test_load_refuses_an_sae_of_another_width(model, tmp_path):
    narrow = SAE(d_model=32, d_hidden=64, k=4)
    narrow.metadata.update({"model_name": "tiny-llama", "layer": 1, "component": "mlp"})
    narrow.save(tmp_path / "narrow.mlx")
    with pytest.raises(SAEError, match="reads 32-dimensional activations but the model has d_model 64"):
        model.load_sae(str(tmp_path / "narrow.mlx"))


def test_train_sae_bad_input(model, tmp_path):
    with pytest.raises(DataError, match="empty"):
        model.train_sae(layer=1, dataset=[], config=CONFIG, progress=False)
    with pytest.raises(TraceError, match="out of range"):
        model.train_sae(layer=9, dataset=TEXTS, config=CONFIG, progress=False)
    with pytest.raises(SAEError, match="fewer than batch_size"):
        model.train_sae(layer=1, dataset=["too short"], config=CONFIG, progress=False)
    eos = model.tokenizer.decode([model.pad_token_id])
    with pytest.raises(DataError, match="no usable token"):
        model.train_sae(layer=1, dataset=[eos * 100] * 30, config=CONFIG, progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("max_tokens", [0, -5, 1.5, True])
def test_train_sae_refuses_a_cap_of_no_tokens(model, max_tokens):
    with pytest.raises(DataError, match=rf"max_tokens must be a positive number of tokens per epoch .*got {max_tokens!r}"):
        model.train_sae(layer=1, dataset=TEXTS, config=CONFIG, max_tokens=max_tokens, progress=False)


def test_a_resume_on_other_activations_is_refused(model, tmp_path, monkeypatch):
    """A run killed after a checkpoint, restarted with the same save_path and config but another
    hook point, model or dataset, refuses the checkpoint instead of mixing it in; the same run
    resumes and finishes."""
    from mlxterp.sae import train as train_module

    config = dataclasses.replace(CONFIG, checkpoint_every=2, validation_split=0.0)
    path = tmp_path / "p.mlx"
    save = train_module.save_checkpoint

    def save_then_crash(trainer, where):
        save(trainer, where)
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        model.train_sae(layer=1, dataset=TEXTS, config=config, save_path=str(path), progress=False)
    monkeypatch.setattr(train_module, "save_checkpoint", save)
    checkpoint = path.parent / "p.mlx.checkpoint"
    assert checkpoint.exists()

    with pytest.raises(SAEError, match=r"made on other activations: .*layer 1 \(this run: 2\).*resume=False"):
        model.train_sae(layer=2, dataset=TEXTS, config=config, save_path=str(path), progress=False)
    other = InterpretableModel((tiny_model("llama", seed=9), byte_tokenizer()), name="tiny-llama")
    with pytest.raises(SAEError, match="made on other activations: model_fingerprint"):
        other.train_sae(layer=1, dataset=TEXTS, config=config, save_path=str(path), progress=False)
    with pytest.raises(SAEError, match="made on other activations: dataset_fingerprint"):
        model.train_sae(layer=1, dataset=TEXTS[::-1], config=config, save_path=str(path), progress=False)
    assert checkpoint.exists() and not path.exists()  # refused runs leave the good checkpoint alone

    sae = model.train_sae(layer=1, dataset=TEXTS, config=config, save_path=str(path), progress=False)
    assert sae.hook_point.layer == 1 and path.exists() and not checkpoint.exists()
