"""GGUF loading: tiny hand-written GGUF files (fast) and the real SmolLM2 GGUF (slow)."""

import mlx.core as mx
import pytest
from mlx.utils import tree_flatten
from mlx_lm.models import llama
from tokenizers import pre_tokenizers

from mlxterp.errors import ModelLoadError
from mlxterp.loading import default_model_path, load_gguf

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
BYTES = sorted(pre_tokenizers.ByteLevel.alphabet())
MERGES = ["Ġ t", "h e", "Ġt he"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
GGUF_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}
VARIED_TEXTS = [
    "Hello world",
    "  leading spaces,   runs   of spaces\n\n\ttabs and\r\nnewlines  ",
    "Numbers 12345, 3.14159 and 2024-01-01",
    "Unicode: café, naïve, Straße, 日本語, Ελληνικά, emoji 🤖👍🏽",
    "def f(x):\n    return {'a': x**2}  # comment\n",
    "<|im_start|>user\nhi<|im_end|>",
]


def tiny_args(tie: bool, hidden_size: int = 32, intermediate_size: int = 48) -> llama.ModelArgs:
    return llama.ModelArgs(
        model_type="llama",
        hidden_size=hidden_size,
        num_hidden_layers=2,
        intermediate_size=intermediate_size,
        num_attention_heads=4,
        num_key_value_heads=2,
        rms_norm_eps=1e-5,
        vocab_size=len(SPECIAL) + len(BYTES) + len(MERGES),
        rope_theta=10000.0,
        tie_word_embeddings=tie,
    )


def llama_cpp_permute(w: mx.array, n_head: int) -> mx.array:
    """llama.cpp convert's q/k row permutation (HF rotate-half order -> interleaved)."""
    rows, cols = w.shape
    return w.reshape(n_head, 2, rows // n_head // 2, cols).swapaxes(1, 2).reshape(rows, cols)


def gguf_tensors(model: llama.Model, args: llama.ModelArgs) -> dict:
    tensors = {}
    for name, value in tree_flatten(model.parameters()):
        stem = name[: -len(".weight")]
        if stem == "model.embed_tokens":
            tensors["token_embd.weight"] = value
        elif stem == "model.norm":
            tensors["output_norm.weight"] = value
        elif stem == "lm_head":
            tensors["output.weight"] = value
        else:
            _, _, layer, module = stem.split(".", 3)
            if module == "self_attn.q_proj":
                value = llama_cpp_permute(value, args.num_attention_heads)
            elif module == "self_attn.k_proj":
                value = llama_cpp_permute(value, args.num_key_value_heads)
            tensors[f"blk.{layer}.{GGUF_NAMES[module]}.weight"] = value
    return tensors


def gguf_metadata(args: llama.ModelArgs, *, arch="llama", add_bos=False) -> dict:
    u32 = lambda v: mx.array(v, dtype=mx.uint32)  # noqa: E731
    tokens = SPECIAL + BYTES + [m.replace(" ", "") for m in MERGES]
    return {
        "general.architecture": arch,
        "general.name": "tiny llama",
        f"{arch}.block_count": u32(args.num_hidden_layers),
        f"{arch}.embedding_length": u32(args.hidden_size),
        f"{arch}.feed_forward_length": u32(args.intermediate_size),
        f"{arch}.attention.head_count": u32(args.num_attention_heads),
        f"{arch}.attention.head_count_kv": u32(args.num_key_value_heads),
        f"{arch}.attention.layer_norm_rms_epsilon": mx.array(args.rms_norm_eps),
        f"{arch}.rope.freq_base": mx.array(args.rope_theta),
        f"{arch}.context_length": u32(128),
        f"{arch}.vocab_size": u32(args.vocab_size),
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "smollm",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.merges": MERGES,
        "tokenizer.ggml.token_type": mx.array([3] * 3 + [1] * (len(tokens) - 3), mx.int32),
        "tokenizer.ggml.bos_token_id": u32(1),
        "tokenizer.ggml.eos_token_id": u32(2),
        "tokenizer.ggml.padding_token_id": u32(2),
        "tokenizer.ggml.unknown_token_id": u32(0),
        "tokenizer.ggml.add_bos_token": mx.array(add_bos),
        "tokenizer.chat_template": CHAT_TEMPLATE,
    }


def write_tiny_gguf(path, *, tie=True, arch="llama", add_bos=False, extra_tensors=None):
    """A tiny random llama model saved the way llama.cpp's converter would; returns the model."""
    mx.random.seed(0)
    args = tiny_args(tie)
    model = llama.Model(args)
    tensors = {**gguf_tensors(model, args), **(extra_tensors or {})}
    mx.save_gguf(str(path), tensors, gguf_metadata(args, arch=arch, add_bos=add_bos))
    return model


@pytest.mark.parametrize("tie", [True, False])
def test_tiny_gguf_logits_match_the_original_model(tmp_path, tie):
    original = write_tiny_gguf(tmp_path / "tiny.gguf", tie=tie)
    loaded, _ = load_gguf(tmp_path / "tiny.gguf")
    tokens = mx.array([[3, 70, 100, 5, 200, 42, 9, 17]])
    assert loaded.args.tie_word_embeddings == tie
    assert mx.allclose(loaded(tokens), original(tokens), atol=1e-5).item()


def test_tiny_gguf_metadata_and_dtype(tmp_path):
    write_tiny_gguf(tmp_path / "tiny.gguf")
    model, _, metadata = load_gguf(tmp_path / "tiny.gguf", return_metadata=True, dtype=mx.float16)
    assert metadata["general.name"] == "tiny llama"
    assert model.model.layers[0].self_attn.q_proj.weight.dtype == mx.float16


def test_tiny_tokenizer_round_trips_and_splits_digits(tmp_path):
    write_tiny_gguf(tmp_path / "tiny.gguf")
    _, tokenizer = load_gguf(tmp_path / "tiny.gguf")
    for text in VARIED_TEXTS:
        assert tokenizer.decode(tokenizer.encode(text)) == text
    assert len(tokenizer.encode("123")) == 3
    assert tokenizer.encode(" the") == [len(SPECIAL) + len(BYTES) + 2]
    assert tokenizer.encode("<|im_end|>") == [2]
    assert tokenizer.encode("hi")[0] != tokenizer.bos_token_id
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token, tokenizer.unk_token) == (
        "<|im_start|>",
        "<|im_end|>",
        "<|im_end|>",
        "<|endoftext|>",
    )


def test_tiny_tokenizer_adds_bos_when_the_metadata_says_so(tmp_path):
    write_tiny_gguf(tmp_path / "tiny.gguf", add_bos=True)
    _, tokenizer = load_gguf(tmp_path / "tiny.gguf")
    ids = tokenizer.encode("hi")
    assert ids[0] == 1 and tokenizer.decode(ids, skip_special_tokens=True) == "hi"


def test_tiny_chat_template(tmp_path):
    write_tiny_gguf(tmp_path / "tiny.gguf")
    _, tokenizer = load_gguf(tmp_path / "tiny.gguf")
    messages = [{"role": "user", "content": "hi"}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_non_gguf_file_is_refused(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_text("this is not a model")
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        load_gguf(path)


def test_corrupt_gguf_header_is_refused_before_mlx_reads_it(tmp_path):
    path = tmp_path / "corrupt.gguf"
    path.write_bytes(b"GGUF" + b"x" * 40)
    with pytest.raises(ModelLoadError, match="corrupt or unsupported header"):
        load_gguf(path)


def test_truncated_gguf_is_refused(tmp_path):
    write_tiny_gguf(tmp_path / "tiny.gguf")
    data = (tmp_path / "tiny.gguf").read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[: len(data) // 3])
    with pytest.raises(ModelLoadError, match="Could not read GGUF"):
        load_gguf(tmp_path / "cut.gguf")


def test_corrupt_gguf_metadata_is_refused_before_mlx_reads_it(tmp_path):
    write_tiny_gguf(tmp_path / "tiny.gguf")
    data = bytearray((tmp_path / "tiny.gguf").read_bytes())
    data[24:32] = (1 << 60).to_bytes(8, "little")  # the first metadata key's length
    (tmp_path / "corrupt.gguf").write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="metadata or tensor table is corrupt"):
        load_gguf(tmp_path / "corrupt.gguf")


def test_missing_gguf_file_is_refused(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_gguf(tmp_path / "absent.gguf")


def test_non_llama_architecture_is_refused(tmp_path):
    write_tiny_gguf(tmp_path / "gpt2.gguf", arch="gpt2")
    with pytest.raises(ModelLoadError, match="'gpt2' model; mlxterp loads only llama"):
        load_gguf(tmp_path / "gpt2.gguf")


def test_unknown_tensor_is_refused(tmp_path):
    write_tiny_gguf(tmp_path / "extra.gguf", extra_tensors={"rope_freqs.weight": mx.ones((4,))})
    with pytest.raises(ModelLoadError, match="rope_freqs"):
        load_gguf(tmp_path / "extra.gguf")


@pytest.mark.slow
def test_default_tokenizer_round_trips(default_model_pair):
    tokenizer = default_model_pair.tokenizer
    for text in VARIED_TEXTS:
        assert tokenizer.decode(tokenizer.encode(text)) == text
    assert tokenizer.encode("<|im_start|>") == [1]
    assert tokenizer.encode("2024") == [tokenizer.encode(d)[0] for d in "2024"]


@pytest.mark.slow
def test_default_tokenizer_streaming_detokenizer(default_model_pair):
    tokenizer = default_model_pair.tokenizer
    detokenizer = tokenizer.detokenizer
    detokenizer.reset()
    for token in tokenizer.encode(VARIED_TEXTS[3]):
        detokenizer.add_token(token)
    detokenizer.finalize()
    assert detokenizer.text == VARIED_TEXTS[3]


@pytest.mark.slow
def test_default_chat_template(default_model_pair):
    tokenizer = default_model_pair.tokenizer
    messages = [{"role": "user", "content": "Hi"}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\n")
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    assert ids[0] == 1 and tokenizer.decode(ids) == text


@pytest.mark.slow
def test_quantized_logits_match_dequantized(default_model_pair):
    quantized, tokenizer = load_gguf(default_model_path(), dequantize=False, dtype=mx.float32)
    layer = quantized.model.layers[0]
    assert (quantized.model.embed_tokens.bits, layer.self_attn.q_proj.bits) == (8, 4)
    tokens = mx.array([tokenizer.encode("The quick brown fox jumps over the lazy dog")])
    expected = default_model_pair.model(tokens)
    got = quantized(tokens)
    assert mx.abs(got - expected).max().item() < 0.5
    assert mx.array_equal(got.argmax(-1), expected.argmax(-1)).item()
