"""SAEConfig: seed 003's examples construct, every invalid value is refused naming its field."""

import math

import pytest

from mlxterp.errors import SAEError
from mlxterp.sae.config import SAEConfig


def test_seed_examples_construct():
    cfg = SAEConfig(expansion_factor=32, k=128, learning_rate=3e-4, num_epochs=5, batch_size=64,
                    warmup_steps=500, validation_split=0.05, normalize_input=True, tied_weights=False,
                    gradient_clip=1.0)
    assert cfg.batch_size == 64 and cfg.normalization == "expected_norm"
    SAEConfig(expansion_factor=16, k=100, learning_rate=3e-4, use_wandb=True,
              wandb_project="my-sae-experiments", wandb_name="sae_layer10_mlp", wandb_tags=["sae", "layer10"])
    SAEConfig(learning_rate=1e-4, warmup_steps=1000, gradient_clip=0.5, normalize_input=True)
    SAEConfig(batch_size=128, expansion_factor=8)
    SAEConfig(tied_weights=True)


def test_defaults_and_derived_values():
    cfg = SAEConfig()
    assert (cfg.architecture, cfg.batch_size, cfg.drop_first_tokens, cfg.auxk_coefficient) == ("topk", 4096, 1, 1 / 32)
    assert cfg.max_norm_ratio == 10.0
    assert (cfg.optimizer, cfg.lr_schedule) == ("adam", "constant")
    assert cfg.warmup_steps == 0
    assert cfg.resolved_learning_rate(2**14) == pytest.approx(2.25e-3)
    assert cfg.resolved_learning_rate(9216) == pytest.approx(3e-3)  # SmolLM2's 16x SAE (docs/sae.md)
    assert cfg.resolved_learning_rate(2**16) == pytest.approx(1.125e-3)
    assert SAEConfig(learning_rate=3e-4).resolved_learning_rate(2**16) == 3e-4
    assert cfg.resolved_k_aux(576) == 288
    assert SAEConfig(expansion_factor=1, k=1).resolved_k_aux(8) == 4
    assert SAEConfig(normalize_input=False).normalization == "none"
    assert SAEConfig(normalize_input="unit_norm").normalization == "unit_norm"


def test_dict_round_trip():
    cfg = SAEConfig(k=8, wandb_tags=["a", "b"], normalize_input="standardize", resample_dead_every=100)
    assert SAEConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(SAEError, match="unknown SAEConfig fields.*bogus"):
        SAEConfig.from_dict({**cfg.to_dict(), "bogus": 1})


@pytest.mark.parametrize(
    "field, value",
    [
        ("expansion_factor", 0), ("expansion_factor", 2.5), ("k", 0), ("k", True),
        ("architecture", "gated"), ("tied_weights", "yes"), ("normalize_input", "layernorm"),
        ("normalize_input", 1), ("b_dec_init", "median"), ("l1_coefficient", -1.0),
        ("auxk_coefficient", math.nan), ("k_aux", 0), ("dead_tokens_threshold", 0),
        ("dead_tokens_threshold", 2**31), ("resample_dead_every", 0), ("learning_rate", 0.0),
        ("learning_rate", -3e-4), ("lr_schedule", "linear"), ("warmup_steps", -1),
        ("min_lr_ratio", 1.5), ("gradient_clip", 0.0), ("num_epochs", 0), ("batch_size", 0),
        ("validation_split", 1.0), ("validation_split", -0.1), ("seed", 1.5), ("context_length", 0),
        ("drop_first_tokens", -1), ("drop_first_tokens", 256), ("drop_special_tokens", None),
        ("max_norm_ratio", 1.0), ("max_norm_ratio", -5.0), ("max_norm_ratio", "10"),
        ("log_every", 0), ("checkpoint_every", 0), ("use_wandb", 1), ("wandb_project", 3),
        ("wandb_tags", "sae"), ("wandb_tags", [1]),
        ("l0_coefficient", 0.0), ("jumprelu_bandwidth", -0.1), ("matryoshka_prefixes", "64"),
        ("matryoshka_prefixes", [64, 16]),
    ],
)
def test_invalid_values_name_the_field(field, value):
    with pytest.raises(SAEError, match=field):
        SAEConfig(**{field: value})


def test_optional_fields_accept_none():
    cfg = SAEConfig(learning_rate=None, gradient_clip=None, k_aux=None, checkpoint_every=None,
                    resample_dead_every=None, max_norm_ratio=None)
    assert cfg.gradient_clip is None and cfg.batch_size == 4096
    assert SAEConfig(batch_size=1).batch_size == 1
