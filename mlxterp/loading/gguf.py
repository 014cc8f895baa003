"""Load llama-architecture GGUF files (llama.cpp's format) as an mlx-lm model and tokenizer.

`mx.load` reads the tensors: float tensors come back as arrays, Q4_0/Q4_1/Q8_0 tensors as
(weight, scales, biases) triplets in MLX's affine layout with group size 32. `gguf_tensors` makes
them exact: float32 scales and biases, and BF16/K-quant tensors read from the file's bytes, so
dequantized weights are llama.cpp's float32 values. The metadata holds the hyperparameters and
the byte-level BPE vocabulary, from which a `tokenizers` tokenizer is rebuilt, so nothing is
downloaded.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx_lm.models import llama
from mlx_lm.tokenizer_utils import BPEStreamingDetokenizer, TokenizerWrapper
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from mlxterp.errors import ModelLoadError
from mlxterp.loading.gguf_tensors import SUPPORTED_TYPES, exact_tensors, read_tensor_table
from mlxterp.platform import on_cpu

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
_HEADER = struct.Struct("<4sIQQ")  # magic, version, tensor count, metadata key count
_MAX_ENTRIES = 1 << 20
SUPPORTED_ARCHITECTURES = ("llama",)
GROUP_SIZE = 32
CONTROL_TOKEN_TYPE = 3

# GGUF tensor name (after "blk.N.") -> mlx-lm name (after "model.layers.N.").
_BLOCK_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_TOP_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
# transformers keyword -> GGUF metadata key of that special token's id.
_SPECIAL_TOKEN_KEYS = {
    "bos_token": "tokenizer.ggml.bos_token_id",
    "eos_token": "tokenizer.ggml.eos_token_id",
    "unk_token": "tokenizer.ggml.unknown_token_id",
    "pad_token": "tokenizer.ggml.padding_token_id",
}
_BLOCK_RE = re.compile(r"blk\.(\d+)\.(\w+)")


def load_gguf(
    path: str | Path,
    *,
    dequantize: bool | None = None,
    dtype: mx.Dtype | None = None,
    return_metadata: bool = False,
) -> tuple[nn.Module, TokenizerWrapper] | tuple[nn.Module, TokenizerWrapper, dict]:
    """Load a llama-architecture GGUF file.

    Args:
        path: the `.gguf` file.
        dequantize: turn quantized tensors into plain `dtype` weights. Default: True where MLX
            computes on the CPU (its quantized kernels are slow there), False on a GPU, where
            they stay `QuantizedLinear`/`QuantizedEmbedding` layers with each tensor's own bits.
        dtype: dtype of the float parameters (and of scales/biases). Default: float32 on the
            CPU, float16 on a GPU. Quantized tensors are dequantized in float32 on the CPU (to
            llama.cpp's exact values) before the cast to `dtype`.
        return_metadata: also return the GGUF metadata dict (`general.name`, `llama.*`, ...).

    Returns:
        `(model, tokenizer)`: an `mlx_lm.models.llama.Model` in eval mode and a TokenizerWrapper,
        then the metadata when `return_metadata` is set.

    Raises:
        ModelLoadError: the file is missing, not GGUF, truncated, not a llama model, or holds a
            tensor type other than F32, F16, BF16, Q4_0, Q4_1, Q8_0, Q2_K, Q4_K and Q6_K.
    """
    path = check_gguf_file(path)
    weights, metadata = read_gguf(path)
    if dequantize is None:
        dequantize = on_cpu()
    if dtype is None:
        dtype = mx.float32 if on_cpu() else mx.float16
    args = model_args(metadata, weights)
    tensors = mlx_tensors(weights, args)
    model = build_model(args, tensors, dequantize=dequantize, dtype=dtype)
    tokenizer = gguf_tokenizer(metadata)
    return (model, tokenizer, metadata) if return_metadata else (model, tokenizer)


def check_gguf_file(path: str | Path) -> Path:
    """Return `path` as a Path if it is a file with a sane GGUF header; else ModelLoadError.

    MLX's reader trusts the header, so a corrupt one could crash the process: check it first.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"GGUF file {path} does not exist; check the path.")
    with open(path, "rb") as f:
        header = f.read(_HEADER.size)
    if header[:4] != GGUF_MAGIC:
        raise ModelLoadError(
            f"{path} is not a GGUF file (it starts with {header[:4]!r}, not {GGUF_MAGIC!r}). "
            "Pass a llama.cpp .gguf file, an mlx-lm model folder or a Hugging Face repo id."
        )
    if len(header) < _HEADER.size:
        raise ModelLoadError(f"GGUF file {path} is truncated (incomplete header); re-download it.")
    _, version, n_tensors, n_metadata = _HEADER.unpack(header)
    if version not in SUPPORTED_VERSIONS or max(n_tensors, n_metadata) > _MAX_ENTRIES:
        raise ModelLoadError(
            f"GGUF file {path} has a corrupt or unsupported header (version {version}, "
            f"{n_tensors} tensors, {n_metadata} metadata keys); mlxterp reads GGUF versions "
            f"{', '.join(map(str, SUPPORTED_VERSIONS))}. Re-download or re-convert the file."
        )
    return path


def is_gguf_file(path: str | Path) -> bool:
    """True when `path` is a file that starts with the GGUF magic bytes."""
    path = Path(path)
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(4) == GGUF_MAGIC


def read_gguf(path: Path) -> tuple[dict[str, mx.array], dict]:
    """Exact tensors (`gguf_tensors.exact_tensors`) and metadata; llama architecture only."""
    table = read_tensor_table(path)
    try:
        weights, metadata = mx.load(str(path), format="gguf", return_metadata=True)
    except (RuntimeError, ValueError) as e:
        raise ModelLoadError(
            f"Could not read GGUF file {path}: {e}. The file may be truncated or corrupt "
            f"(mlxterp reads {', '.join(SUPPORTED_TYPES)} tensors)."
        ) from e
    arch = metadata.get("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ModelLoadError(
            f"GGUF file {path} holds a {arch!r} model; mlxterp loads only "
            f"{', '.join(SUPPORTED_ARCHITECTURES)} GGUF files. Load other architectures from "
            "an mlx-lm folder or Hugging Face repo instead."
        )
    return exact_tensors(weights, table, path), metadata


def model_args(metadata: dict, weights: dict[str, mx.array]) -> llama.ModelArgs:
    """mlx-lm llama ModelArgs from the `llama.*` metadata keys."""
    n_heads = _int(metadata, "llama.attention.head_count")
    d_model = _int(metadata, "llama.embedding_length")
    n_tokens = len(metadata.get("tokenizer.ggml.tokens", []))
    return llama.ModelArgs(
        model_type="llama",
        hidden_size=d_model,
        num_hidden_layers=_int(metadata, "llama.block_count"),
        intermediate_size=_int(metadata, "llama.feed_forward_length"),
        num_attention_heads=n_heads,
        num_key_value_heads=_int(metadata, "llama.attention.head_count_kv", n_heads),
        head_dim=_int(metadata, "llama.attention.key_length", d_model // n_heads),
        rms_norm_eps=_float(metadata, "llama.attention.layer_norm_rms_epsilon"),
        rope_theta=_float(metadata, "llama.rope.freq_base", 10000.0),
        vocab_size=_int(metadata, "llama.vocab_size", n_tokens or None),
        max_position_embeddings=_int(metadata, "llama.context_length", 2048),
        tie_word_embeddings="output.weight" not in weights,
    )


def _int(metadata: dict, key: str, default: int | None = None) -> int:
    return int(_value(metadata, key, default))


def _float(metadata: dict, key: str, default: float | None = None) -> float:
    return float(_value(metadata, key, default))


def _value(metadata: dict, key: str, default):
    value = metadata.get(key)
    if value is not None:
        return value.item() if isinstance(value, mx.array) else value
    if default is None:
        raise ModelLoadError(f"GGUF metadata lacks {key!r}; the file is incomplete or not llama.")
    return default


def mlx_tensors(weights: dict[str, mx.array], args: llama.ModelArgs) -> dict[str, mx.array]:
    """GGUF tensors renamed to mlx-lm names, with q/k rows put back in Hugging Face order.

    Each name keeps its suffix (`weight`, and `scales`/`biases` for quantized tensors).
    """
    tensors = {}
    for name, value in weights.items():
        stem, suffix = name.rsplit(".", 1)
        tensors[f"{_mlx_name(stem)}.{suffix}"] = _unpermute_qk(stem, value, args)
    return tensors


def _mlx_name(stem: str) -> str:
    block = _BLOCK_RE.fullmatch(stem)
    if block and block.group(2) in _BLOCK_NAMES:
        return f"model.layers.{block.group(1)}.{_BLOCK_NAMES[block.group(2)]}"
    if stem in _TOP_NAMES:
        return _TOP_NAMES[stem]
    raise ModelLoadError(
        f"GGUF tensor {stem!r} has no place in an mlx-lm llama model (mlxterp supports plain "
        "llama GGUFs without rope-frequency tables, biases or extra tensors)."
    )


def _unpermute_qk(stem: str, value: mx.array, args: llama.ModelArgs) -> mx.array:
    """Undo llama.cpp's q/k row permutation, applied to weight, scales and biases rows alike.

    llama.cpp's converter interleaves each head's rows for its RoPE: HF row (head, half, j)
    becomes GGUF row (head, j, half). mlx-lm's RoPE (traditional=False) expects HF order.
    """
    if stem.endswith(".attn_q"):
        n_heads = args.num_attention_heads
    elif stem.endswith(".attn_k"):
        n_heads = args.num_key_value_heads
    else:
        return value
    rows, cols = value.shape
    return (
        value.reshape(n_heads, rows // n_heads // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)
    )


def quantized_bits(tensors: dict[str, mx.array]) -> dict[str, int]:
    """Bits per weight of each quantized module, keyed by module path.

    A row of `n` inputs packs into `n * bits / 32` uint32 words and has `n / GROUP_SIZE` scales.
    """
    bits = {}
    for name, scales in tensors.items():
        if name.endswith(".scales"):
            module = name[: -len(".scales")]
            words = tensors[f"{module}.weight"].shape[-1]
            bits[module] = words * 32 // (scales.shape[-1] * GROUP_SIZE)
    return bits


def dequantized(tensors: dict[str, mx.array], dtype: mx.Dtype) -> dict[str, mx.array]:
    """Every tensor as a plain `dtype` array (quantized triplets become one float weight).

    With the float32 scales and biases of `exact_tensors`, `mx.dequantize` on the CPU gives
    llama.cpp's float32 values: `scale * q` is exact, so only the `+ bias` rounds, as in ggml.
    """
    bits = quantized_bits(tensors)
    out = {}
    for name, value in tensors.items():
        module, suffix = name.rsplit(".", 1)
        if module not in bits:
            out[name] = value.astype(dtype)
        elif suffix == "weight":
            scales, biases = tensors[f"{module}.scales"], tensors[f"{module}.biases"]
            w = mx.dequantize(
                value, scales, biases, group_size=GROUP_SIZE, bits=bits[module], stream=mx.cpu
            )
            out[name] = w.astype(dtype)
    return out


def build_model(
    args: llama.ModelArgs, tensors: dict[str, mx.array], *, dequantize: bool, dtype: mx.Dtype
) -> nn.Module:
    """An evaluated mlx-lm llama Model holding `tensors` (quantized or dequantized)."""
    model = llama.Model(args)
    if dequantize:
        tensors = dequantized(tensors, dtype)
    else:
        bits = quantized_bits(tensors)
        nn.quantize(
            model,
            class_predicate=lambda p, m: p in bits and {"group_size": GROUP_SIZE, "bits": bits[p]},
        )
        tensors = {k: v if v.dtype == mx.uint32 else v.astype(dtype) for k, v in tensors.items()}
    try:
        model.load_weights(list(tensors.items()), strict=True)
    except ValueError as e:
        raise ModelLoadError(f"GGUF tensors do not fit a llama model built from its metadata: {e}")
    mx.eval(model.parameters())
    model.eval()
    return model


def gguf_tokenizer(metadata: dict) -> TokenizerWrapper:
    """TokenizerWrapper around a byte-level BPE rebuilt from the `tokenizer.ggml.*` metadata."""
    model_kind = metadata.get("tokenizer.ggml.model")
    if model_kind != "gpt2":
        raise ModelLoadError(
            f"GGUF tokenizer type {model_kind!r} is not supported; mlxterp rebuilds only "
            "byte-level BPE ('gpt2') tokenizers from GGUF metadata."
        )
    tokens = metadata["tokenizer.ggml.tokens"]
    special = {
        role: tokens[int(metadata[key].item())]
        for role, key in _SPECIAL_TOKEN_KEYS.items()
        if key in metadata
    }
    fast = PreTrainedTokenizerFast(
        tokenizer_object=bpe_tokenizer(metadata),
        chat_template=metadata.get("tokenizer.chat_template"),
        **special,
    )
    return TokenizerWrapper(fast, detokenizer_class=BPEStreamingDetokenizer)


def bpe_tokenizer(metadata: dict) -> Tokenizer:
    """A `tokenizers.Tokenizer`: byte-level BPE over the GGUF vocabulary and merges.

    Control tokens (token_type 3) become special tokens; a BOS is prepended only when
    `tokenizer.ggml.add_bos_token` says so.
    """
    tokens = metadata["tokenizer.ggml.tokens"]
    merges = [tuple(m.split(" ", 1)) for m in metadata["tokenizer.ggml.merges"]]
    tokenizer = Tokenizer(
        models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, fuse_unk=False)
    )
    tokenizer.pre_tokenizer = _pre_tokenizer(metadata.get("tokenizer.ggml.pre"))
    tokenizer.decoder = decoders.ByteLevel()
    types = np.array(metadata["tokenizer.ggml.token_type"])
    control = [tokens[i] for i in np.flatnonzero(types == CONTROL_TOKEN_TYPE)]
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
    if _flag(metadata, "tokenizer.ggml.add_bos_token"):
        bos_id = int(metadata["tokenizer.ggml.bos_token_id"].item())
        bos = tokens[bos_id]
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)]
        )
    return tokenizer


def _pre_tokenizer(pre: str | None) -> pre_tokenizers.PreTokenizer:
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre == "smollm":
        return pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), byte_level]
        )
    return byte_level


def _flag(metadata: dict, key: str) -> bool:
    value = metadata.get(key)
    return bool(value.item()) if isinstance(value, mx.array) else bool(value)
