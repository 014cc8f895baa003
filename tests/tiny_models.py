"""Tiny random-weight mlx-lm models of each supported family, with a byte-level tokenizer."""

from __future__ import annotations

import importlib

import mlx.core as mx
import numpy as np
from mlx_lm.tokenizer_utils import TokenizerWrapper

VOCAB = 300
D = 64

_COMMON = dict(vocab_size=VOCAB, hidden_size=D, num_hidden_layers=3, intermediate_size=128)
_LLAMA_LIKE = dict(
    **_COMMON, num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5, rope_theta=10000.0
)

FAMILY_ARGS = {
    "llama": dict(_LLAMA_LIKE, model_type="llama", tie_word_embeddings=True),
    "mistral": dict(_LLAMA_LIKE, model_type="mistral", tie_word_embeddings=False),
    "qwen2": dict(_LLAMA_LIKE, model_type="qwen2", tie_word_embeddings=False),
    "qwen3": dict(_LLAMA_LIKE, model_type="qwen3", head_dim=16, tie_word_embeddings=True,
                  max_position_embeddings=512),
    "gemma": dict(_LLAMA_LIKE, model_type="gemma", head_dim=16),
    "gemma2": dict(_LLAMA_LIKE, model_type="gemma2", head_dim=16, query_pre_attn_scalar=16.0),
    "gemma3_text": dict(_LLAMA_LIKE, model_type="gemma3_text", head_dim=16,
                        query_pre_attn_scalar=16.0, sliding_window=32, sliding_window_pattern=2),
    "phi3": dict(_LLAMA_LIKE, model_type="phi3"),
    "olmo2": dict(_LLAMA_LIKE, model_type="olmo2", tie_word_embeddings=False),
    "gpt2": dict(model_type="gpt2", vocab_size=VOCAB, n_embd=D, n_layer=3, n_head=4,
                 n_positions=512, n_ctx=512, layer_norm_epsilon=1e-5),
    "gpt_neox": dict(model_type="gpt_neox", vocab_size=VOCAB, hidden_size=D, num_hidden_layers=3,
                     num_attention_heads=4, intermediate_size=128, layer_norm_eps=1e-5,
                     rotary_emb_base=10000, rotary_pct=0.25, max_position_embeddings=512,
                     use_parallel_residual=True),
}
MODULES = {"mistral": "llama"}


def tiny_model(family: str = "llama", seed: int = 0):
    """A 3-layer, d_model 64 mlx-lm model of `family` with random float32 weights."""
    module = importlib.import_module(f"mlx_lm.models.{MODULES.get(family, family)}")
    args = module.ModelArgs.from_dict(FAMILY_ARGS[family])
    mx.random.seed(seed)
    model = module.Model(args)
    model.set_dtype(mx.float32)
    mx.eval(model.parameters())
    return model


def byte_tokenizer() -> TokenizerWrapper:
    """A byte-level tokenizer (ids 0..255 are bytes, 256 is <eos>) as mlx-lm wraps tokenizers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    vocab["<eos>"] = len(vocab)
    raw = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    hf = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<eos>", pad_token="<eos>")
    return TokenizerWrapper(hf)


def midway_norm(norms):
    """A limit halfway between the two middle norms, so that no token sits on it (float round-off)."""
    middle = np.sort(norms)[len(norms) // 2 - 1 : len(norms) // 2 + 1]
    return float(middle.mean())
