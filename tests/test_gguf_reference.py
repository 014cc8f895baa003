"""GGUF values against the `gguf` package (llama.cpp's Python reader) as an independent reference.

Tiny llama GGUFs of every tensor type the loader reads are written with `gguf.GGUFWriter`; each
loaded tensor must equal `gguf.quants.dequantize` to float32 round-off, and every block's output
and the logits must equal those of mlx-lm's llama holding the gguf package's weights (q/k rows
un-permuted here, by inverting llama.cpp's convert-script permutation). The default model gets the
same activation check (slow).
"""

import gguf
import mlx.core as mx
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from mlx.utils import tree_flatten
from mlx_lm.models import llama
from mlx_lm.models.base import create_causal_mask

from mlxterp.errors import ModelLoadError
from mlxterp.loading import default_model_path, load_gguf
from test_gguf import BYTES, CHAT_TEMPLATE, GGUF_NAMES, MERGES, SPECIAL, llama_cpp_permute
from test_gguf import tiny_args as gguf_tiny_args

FLOAT32_ROUNDOFF = 2 * float(np.finfo(np.float32).eps)
ACTIVATION_RTOL = 1e-5
SINK_NORM_RATIO = 10
# Every type mlxterp reads; 2-D weights take the type, norms stay F32 as llama.cpp writes them.
TYPES = [Q.F32, Q.F16, Q.BF16, Q.Q4_0, Q.Q4_1, Q.Q8_0, Q.Q2_K, Q.Q4_K, Q.Q6_K]
# Byte offsets of the float16 scales in a K-quant block, and the largest |value| per unit scale.
K_QUANT_SCALES = {Q.Q2_K: ((80, 82), 60), Q.Q4_K: ((0, 2), 1008), Q.Q6_K: ((208,), 4096)}
MLX_NAMES = {gguf_name: mlx_name for mlx_name, gguf_name in GGUF_NAMES.items()}
TEXT = (
    "The Eiffel Tower was built for the 1889 World's Fair in Paris. At 330 metres, it was the "
    "tallest man-made structure in the world until 1930. Today, nearly seven million people "
    "visit it every year; most of them take the lift to the top, while others climb the 674 "
    "steps to the second floor.\n\nIn 2024, the tower hosted events of the Olympic Games."
)


def tiny_args() -> llama.ModelArgs:
    """A tiny llama whose rows are whole 256-value blocks, so that K-quants fit too."""
    return gguf_tiny_args(tie=False, hidden_size=256, intermediate_size=512)


def tiny_float_tensors(args: llama.ModelArgs, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """GGUF-named float32 weights of a random tiny llama (q/k already in llama.cpp's order)."""
    d, ff, vocab = args.hidden_size, args.intermediate_size, args.vocab_size
    kv = args.num_key_value_heads * d // args.num_attention_heads
    shapes = {"attn_q": (d, d), "attn_k": (kv, d), "attn_v": (kv, d), "attn_output": (d, d),
              "ffn_gate": (ff, d), "ffn_up": (ff, d), "ffn_down": (d, ff)}
    tensors = {"token_embd.weight": rng.normal(0, 1, (vocab, d)),
               "output.weight": rng.normal(0, d**-0.5, (vocab, d)),
               "output_norm.weight": 1 + 0.1 * rng.normal(size=d)}
    for i in range(args.num_hidden_layers):
        for stem, shape in shapes.items():
            tensors[f"blk.{i}.{stem}.weight"] = rng.normal(0, shape[1] ** -0.5, shape)
        for stem in ("attn_norm", "ffn_norm"):
            tensors[f"blk.{i}.{stem}.weight"] = 1 + 0.1 * rng.normal(size=d)
    return {name: value.astype(np.float32) for name, value in tensors.items()}


def k_quant_blocks(values: np.ndarray, qtype: Q, rng: np.random.Generator) -> np.ndarray:
    """Random valid K-quant blocks (the gguf package only dequantizes these types) of about the
    magnitude of `values`: random quants and sub-block scales, float16 scales set to fit."""
    block, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    rows, cols = values.shape
    blocks = rng.integers(0, 256, (rows * cols // block, block_bytes), dtype=np.uint8)
    offsets, largest = K_QUANT_SCALES[qtype]
    for offset in offsets:
        scale = np.abs(values).max() / largest * rng.uniform(0.5, 1.0, len(blocks))
        blocks[:, offset : offset + 2] = scale.astype(np.float16).view(np.uint8).reshape(-1, 2)
    return blocks.reshape(rows, cols // block * block_bytes)


def encode(values: np.ndarray, qtype: Q, rng: np.random.Generator) -> np.ndarray:
    if qtype in K_QUANT_SCALES:
        return k_quant_blocks(values, qtype, rng)
    return gguf.quants.quantize(values, qtype)


def write_typed_gguf(path, qtype: Q, *, edit=None, seed=0) -> None:
    """A tiny llama GGUF whose 2-D weights are `qtype`, written by the gguf package.

    `edit(tensors)` may change the float32 tensors before they are encoded.
    """
    args, rng = tiny_args(), np.random.default_rng(seed)
    tensors = tiny_float_tensors(args, rng)
    if edit:
        edit(tensors)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny llama")
    writer.add_block_count(args.num_hidden_layers)
    writer.add_context_length(128)
    writer.add_embedding_length(args.hidden_size)
    writer.add_feed_forward_length(args.intermediate_size)
    writer.add_head_count(args.num_attention_heads)
    writer.add_head_count_kv(args.num_key_value_heads)
    writer.add_layer_norm_rms_eps(args.rms_norm_eps)
    writer.add_rope_freq_base(args.rope_theta)
    writer.add_vocab_size(args.vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(SPECIAL + BYTES + [m.replace(" ", "") for m in MERGES])
    writer.add_token_merges(MERGES)
    writer.add_token_types([3] * len(SPECIAL) + [1] * (len(BYTES) + len(MERGES)))
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)
    for name, values in tensors.items():
        if values.ndim == 1 or qtype == Q.F32:
            writer.add_tensor(name, values)
        elif qtype == Q.F16:
            writer.add_tensor(name, values.astype(np.float16))
        else:
            writer.add_tensor(name, encode(values, qtype, rng), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def reference_weights(reader: gguf.GGUFReader) -> dict[str, np.ndarray]:
    """mlx-lm-named float32 weights dequantized by the gguf package, q/k rows in HF order."""
    n_heads = int(reader.fields["llama.attention.head_count"].contents())
    n_kv_heads = int(reader.fields["llama.attention.head_count_kv"].contents())
    weights = {}
    for tensor in reader.tensors:
        shape = tuple(int(n) for n in reversed(tensor.shape))
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(shape)
        stem = tensor.name[: -len(".weight")]
        if stem.startswith("blk."):
            _, layer, module = stem.split(".")
            if module in ("attn_q", "attn_k"):
                values = unpermute(values, n_heads if module == "attn_q" else n_kv_heads)
            name = f"model.layers.{layer}.{MLX_NAMES[module]}"
        else:
            name = {"token_embd": "model.embed_tokens", "output_norm": "model.norm",
                    "output": "lm_head"}[stem]
        weights[f"{name}.weight"] = values
    return weights


def unpermute(values: np.ndarray, n_heads: int) -> np.ndarray:
    """Invert llama.cpp's q/k permutation: GGUF row i holds the HF row the permutation put there."""
    rows = np.arange(len(values))
    hf_row = np.asarray(llama_cpp_permute(rows[:, None], n_heads)).ravel()
    out = np.empty_like(values)
    out[hf_row] = values
    return out


def reference_model(path) -> llama.Model:
    """mlx-lm's llama built from the file's metadata and the gguf package's weights."""
    reader = gguf.GGUFReader(str(path))
    field = lambda key, default=None: (  # noqa: E731
        reader.fields[key].contents() if key in reader.fields else default
    )
    weights = reference_weights(reader)
    d, n_heads = int(field("llama.embedding_length")), int(field("llama.attention.head_count"))
    args = llama.ModelArgs(
        model_type="llama",
        hidden_size=d,
        num_hidden_layers=int(field("llama.block_count")),
        intermediate_size=int(field("llama.feed_forward_length")),
        num_attention_heads=n_heads,
        num_key_value_heads=int(field("llama.attention.head_count_kv")),
        head_dim=int(field("llama.attention.key_length", d // n_heads)),
        rms_norm_eps=float(field("llama.attention.layer_norm_rms_epsilon")),
        rope_theta=float(field("llama.rope.freq_base", 10000.0)),
        vocab_size=len(field("tokenizer.ggml.tokens")),
        max_position_embeddings=int(field("llama.context_length")),
        tie_word_embeddings="lm_head.weight" not in weights,
    )
    model = llama.Model(args)
    model.load_weights([(k, mx.array(v)) for k, v in weights.items()], strict=True)
    mx.eval(model.parameters())
    return model


def blocks_and_logits(model, tokens: mx.array) -> list[np.ndarray]:
    """Each block's output (run by hand) and then the logits, for one sequence."""
    h = model.model.embed_tokens(tokens)
    mask = create_causal_mask(tokens.shape[1])
    outputs = []
    for layer in model.model.layers:
        h = layer(h, mask, cache=None)
        outputs.append(h)
    outputs.append(model(tokens))
    mx.eval(outputs)
    return [np.array(o[0]) for o in outputs]


def relative_errors(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """Per position: ||got - want|| / ||want||."""
    return np.linalg.norm(got - want, axis=-1) / np.linalg.norm(want, axis=-1)


def assert_weights_equal_reference(model, path) -> None:
    reference = reference_weights(gguf.GGUFReader(str(path)))
    loaded = dict(tree_flatten(model.parameters()))
    assert loaded.keys() == reference.keys()
    for name, want in reference.items():
        np.testing.assert_allclose(
            np.array(loaded[name]), want, rtol=FLOAT32_ROUNDOFF,
            atol=FLOAT32_ROUNDOFF * np.abs(want).max(), err_msg=name,
        )


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_every_tensor_equals_the_gguf_package_dequantization(tmp_path, qtype):
    write_typed_gguf(tmp_path / "tiny.gguf", qtype)
    model, _ = load_gguf(tmp_path / "tiny.gguf")
    assert model.model.layers[0].self_attn.q_proj.weight.dtype == mx.float32
    assert_weights_equal_reference(model, tmp_path / "tiny.gguf")


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_tiny_activations_equal_the_gguf_package_reference(tmp_path, qtype):
    write_typed_gguf(tmp_path / "tiny.gguf", qtype)
    model, _ = load_gguf(tmp_path / "tiny.gguf")
    reference = reference_model(tmp_path / "tiny.gguf")
    tokens = mx.array(np.random.default_rng(1).integers(0, model.args.vocab_size, (1, 24)))
    for i, (got, want) in enumerate(
        zip(blocks_and_logits(model, tokens), blocks_and_logits(reference, tokens))
    ):
        worst = relative_errors(got, want)[1:].max()  # position 0 is left out (attention sink)
        assert worst <= ACTIVATION_RTOL, f"output {i}: relative error {worst:.2e}"


def scaled(name: str, largest: float):
    """An edit scaling tensor `name` so that its largest |value| is `largest`."""

    def edit(tensors):
        tensors[name] *= np.float32(largest / np.abs(tensors[name]).max())

    return edit


@pytest.mark.parametrize(
    "qtype, edit",
    [
        # In float16, Q4_0's bias -8 * d and Q8_0's -128 * d overflow for d > 8188 / 511.75.
        (Q.Q4_0, scaled("blk.0.ffn_up.weight", 8 * 30000)),
        (Q.Q8_0, scaled("blk.0.ffn_up.weight", 127 * 2000)),
        # BF16 values below float16's normal range, and above its largest value.
        (Q.BF16, scaled("blk.1.ffn_down.weight", 1e-5)),
        (Q.BF16, scaled("blk.0.ffn_up.weight", 1e6)),
    ],
    ids=["Q4_0-large-scale", "Q8_0-large-scale", "BF16-tiny", "BF16-huge"],
)
def test_values_outside_float16_range_are_exact(tmp_path, qtype, edit):
    write_typed_gguf(tmp_path / "tiny.gguf", qtype, edit=edit)
    model, _ = load_gguf(tmp_path / "tiny.gguf")
    assert_weights_equal_reference(model, tmp_path / "tiny.gguf")


@pytest.mark.parametrize("qtype", [Q.Q5_0, Q.Q5_1], ids=lambda t: t.name)
def test_unsupported_tensor_type_is_refused_by_name(tmp_path, qtype):
    write_typed_gguf(tmp_path / "tiny.gguf", qtype)
    with pytest.raises(ModelLoadError, match=rf"'token_embd.weight' is {qtype.name}, a type mlxt"):
        load_gguf(tmp_path / "tiny.gguf")


@pytest.mark.slow
def test_default_model_activations_equal_the_gguf_package_reference(default_model_pair):
    model, tokenizer = default_model_pair.model, default_model_pair.tokenizer
    reference = reference_model(default_model_path())
    tokens = mx.array([tokenizer.encode(TEXT)])
    got, want = blocks_and_logits(model, tokens), blocks_and_logits(reference, tokens)
    left_out = set()
    for i, (g, w) in enumerate(zip(got, want)):
        norms = np.linalg.norm(w, axis=-1)
        keep = norms <= SINK_NORM_RATIO * np.median(norms)
        keep[0] = False
        left_out |= set(np.flatnonzero(~keep).tolist())
        worst = relative_errors(g, w)[keep].max()
        assert worst <= ACTIVATION_RTOL, f"output {i}: relative error {worst:.2e}"
    print(f"{tokens.shape[1]} tokens; positions left out in some block: {sorted(left_out)}")
