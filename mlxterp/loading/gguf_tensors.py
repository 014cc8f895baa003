"""GGUF tensors as the exact float32 values llama.cpp computes from them.

`mx.load` reads Q4_0, Q4_1 and Q8_0 tensors as MLX affine (weight, scales, biases) triplets
whose scales and biases are float16, and converts BF16, Q2_K, Q4_K and Q6_K tensors straight
to float16 weights: either way a weight is rounded through float16 when dequantized. This module
reads the file's tensor table (each tensor's type, shape and offset) to refuse types it cannot
read exactly before MLX reads them, gives the triplets float32 scales and biases (with which
`scale * q + bias` is exactly llama.cpp's `d * q + m` / `d * q` in float32), and dequantizes BF16
and K-quant tensors from the file's bytes in numpy, in the order of operations of ggml's
reference `dequantize_row_*` functions.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import numpy as np

from mlxterp.errors import ModelLoadError

# ggml.h's enum ggml_type (the names of the types mlxterp cannot read are only for messages).
F32, F16, Q4_0, Q4_1, Q8_0, Q2_K, Q4_K, Q6_K, BF16 = 0, 1, 2, 3, 8, 10, 12, 14, 30
GGML_TYPE_NAMES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1",
    10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 16: "IQ2_XXS",
    17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S",
    23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64", 29: "IQ1_M", 30: "BF16",
    34: "TQ1_0", 35: "TQ2_0", 39: "MXFP4",
}
# Supported type -> (values per block, bytes per block).
BLOCK_SIZES = {
    F32: (1, 4), F16: (1, 2), BF16: (1, 2),
    Q4_0: (32, 18), Q4_1: (32, 20), Q8_0: (32, 34),
    Q2_K: (256, 84), Q4_K: (256, 144), Q6_K: (256, 210),
}
SUPPORTED_TYPES = tuple(GGML_TYPE_NAMES[t] for t in BLOCK_SIZES)
# mx.load keeps these as MLX affine triplets: q (unsigned) * scale + bias.
AFFINE_TYPES = (Q4_0, Q4_1, Q8_0)

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_TYPE_AND_COUNT = struct.Struct("<IQ")  # metadata array item type, item count
_TYPE_AND_OFFSET = struct.Struct("<IQ")  # tensor type, data offset
_STRING, _ARRAY = 8, 9
_SCALAR_BYTES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_HEADER_BYTES = 24
_MAX_DIMS = 4
_DEFAULT_ALIGNMENT = 32
_CHUNK_BLOCKS = 1 << 14  # K-quant blocks dequantized at once (4M values), to bound temporaries


@dataclass(frozen=True)
class TensorInfo:
    """One entry of a GGUF tensor table; `shape` is numpy's order (GGUF stores it reversed)."""

    name: str
    ggml_type: int
    shape: tuple[int, ...]
    offset: int  # of the tensor's first byte in the file
    nbytes: int


def read_tensor_table(path: Path) -> dict[str, TensorInfo]:
    """Each tensor's type, shape and place in the file, checked before MLX reads the data.

    Raises:
        ModelLoadError: the metadata or tensor table is corrupt or truncated, a tensor lies past
            the end of the file, or a tensor has a type mlxterp cannot dequantize exactly.
    """
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        try:
            table = _Reader(buf, path).tensor_table()
        except (struct.error, UnicodeDecodeError, OverflowError) as e:
            raise ModelLoadError(
                f"Could not read GGUF file {path}: its metadata or tensor table is corrupt or "
                f"truncated ({e}); re-download or re-convert the file."
            ) from e
        size = len(buf)
    for info in table.values():
        if info.offset + info.nbytes > size:
            raise ModelLoadError(
                f"Could not read GGUF file {path}: tensor {info.name!r} ends at byte "
                f"{info.offset + info.nbytes:,}, past the end of the file ({size:,} bytes). "
                "The file is truncated; re-download it."
            )
    return table


class _Reader:
    """A cursor over the GGUF header, metadata and tensor table (little-endian, version 2/3)."""

    def __init__(self, buf: mmap.mmap, path: Path):
        self.buf, self.path, self.pos = buf, path, _HEADER_BYTES

    def tensor_table(self) -> dict[str, TensorInfo]:
        n_tensors, n_metadata = struct.unpack_from("<QQ", self.buf, 8)
        alignment = _DEFAULT_ALIGNMENT
        for _ in range(n_metadata):
            key = self.string()
            (value_type,) = self.unpack(_U32)
            if key == b"general.alignment" and value_type == 4:
                (alignment,) = self.unpack(_U32)
            else:
                self.skip(value_type)
        if alignment <= 0 or alignment & (alignment - 1):
            raise self.corrupt(f"general.alignment is {alignment}, not a power of two")
        entries = [self.tensor_entry() for _ in range(n_tensors)]
        data_start = -(-self.pos // alignment) * alignment
        table = {}
        for name, ggml_type, shape, offset in entries:
            nbytes = self.checked_nbytes(name, ggml_type, shape)
            table[name] = TensorInfo(name, ggml_type, shape, data_start + offset, nbytes)
        return table

    def tensor_entry(self) -> tuple[str, int, tuple[int, ...], int]:
        name = self.string().decode("utf-8")
        (n_dims,) = self.unpack(_U32)
        if not 1 <= n_dims <= _MAX_DIMS:
            raise self.corrupt(f"tensor {name!r} has {n_dims} dimensions")
        dims = struct.unpack_from(f"<{n_dims}Q", self.buf, self.pos)
        self.pos += 8 * n_dims
        ggml_type, offset = self.unpack(_TYPE_AND_OFFSET)
        return name, ggml_type, tuple(reversed(dims)), offset

    def checked_nbytes(self, name: str, ggml_type: int, shape: tuple[int, ...]) -> int:
        """The tensor's size in bytes; ModelLoadError for a type mlxterp does not read."""
        if ggml_type not in BLOCK_SIZES:
            type_name = GGML_TYPE_NAMES.get(ggml_type, f"type id {ggml_type}")
            raise ModelLoadError(
                f"GGUF file {self.path}: tensor {name!r} is {type_name}, a type mlxterp does not "
                f"dequantize; it reads {', '.join(SUPPORTED_TYPES)} tensors. Convert the model "
                "again with llama.cpp's convert_hf_to_gguf.py --outtype f16, bf16 or q8_0 (or "
                "llama-quantize to Q4_0, Q4_1 or Q8_0), or load its Hugging Face or mlx-lm version."
            )
        block, block_bytes = BLOCK_SIZES[ggml_type]
        if shape[-1] % block:
            raise self.corrupt(f"tensor {name!r} has rows of {shape[-1]}, not whole {block}-blocks")
        return int(np.prod(shape, dtype=np.int64)) // block * block_bytes

    def unpack(self, fmt: struct.Struct) -> tuple:
        values = fmt.unpack_from(self.buf, self.pos)
        self.pos += fmt.size
        return values

    def string(self) -> bytes:
        (length,) = self.unpack(_U64)
        if self.pos + length > len(self.buf):
            raise self.corrupt(f"a {length:,}-byte string runs past the end of the file")
        self.pos += length
        return self.buf[self.pos - length : self.pos]

    def skip(self, value_type: int) -> None:
        if value_type in _SCALAR_BYTES:
            self.pos += _SCALAR_BYTES[value_type]
        elif value_type == _STRING:
            self.skip_strings(1)
        elif value_type == _ARRAY:
            item_type, count = self.unpack(_TYPE_AND_COUNT)
            if item_type in _SCALAR_BYTES:
                self.pos += _SCALAR_BYTES[item_type] * count
            elif item_type == _STRING:
                self.skip_strings(count)
            else:
                for _ in range(count):
                    self.skip(item_type)
        else:
            raise self.corrupt(f"unknown metadata value type {value_type}")
        if self.pos > len(self.buf):
            raise self.corrupt("the metadata runs past the end of the file")

    def skip_strings(self, count: int) -> None:
        # The tokenizer's vocabulary and merges are ~100k strings: keep this loop tight.
        buf, pos, unpack = self.buf, self.pos, _U64.unpack_from
        for _ in range(count):
            pos += 8 + unpack(buf, pos)[0]
        self.pos = pos

    def corrupt(self, what: str) -> ModelLoadError:
        return ModelLoadError(
            f"Could not read GGUF file {self.path}: its metadata or tensor table is corrupt "
            f"({what}); re-download or re-convert the file."
        )


def exact_tensors(
    weights: dict[str, mx.array], table: dict[str, TensorInfo], path: Path
) -> dict[str, mx.array]:
    """`mx.load`'s tensors with float32 scales and biases, and BF16/K-quants read exactly.

    Q4_0 and Q8_0 biases are recomputed as `-8 * scale` / `-128 * scale` in float32: MLX's
    float16 product overflows to -inf once a scale passes 8188 / 511.75.
    """
    out = dict(weights)
    with open(path, "rb") as f:
        for name, info in table.items():
            if info.ggml_type in AFFINE_TYPES:
                module = name[: -len(".weight")]
                scales = weights[f"{module}.scales"].astype(mx.float32)
                if info.ggml_type == Q4_1:
                    biases = weights[f"{module}.biases"].astype(mx.float32)
                else:
                    biases = scales * (-8.0 if info.ggml_type == Q4_0 else -128.0)
                out[f"{module}.scales"], out[f"{module}.biases"] = scales, biases
            elif info.ggml_type in (BF16, Q2_K, Q4_K, Q6_K):
                f.seek(info.offset)
                data = np.frombuffer(f.read(info.nbytes), dtype=np.uint8)
                out[name] = mx.array(dequantize_bytes(data, info.ggml_type, info.shape))
    return out


def dequantize_bytes(data: np.ndarray, ggml_type: int, shape: tuple[int, ...]) -> np.ndarray:
    """A BF16, Q2_K, Q4_K or Q6_K tensor's bytes as float32 values of `shape`."""
    if ggml_type == BF16:
        return (data.view(np.uint16).astype(np.uint32) << 16).view(np.float32).reshape(shape)
    block, block_bytes = BLOCK_SIZES[ggml_type]
    blocks = data.reshape(-1, block_bytes)
    out = np.empty((len(blocks), block), dtype=np.float32)
    dequantize_blocks = _K_QUANTS[ggml_type]
    for start in range(0, len(blocks), _CHUNK_BLOCKS):
        stop = start + _CHUNK_BLOCKS
        out[start:stop] = dequantize_blocks(blocks[start:stop])
    return out.reshape(shape)


def _f16(blocks: np.ndarray, start: int) -> np.ndarray:
    """The float16 at byte `start` of each block, as a float32 column."""
    return np.ascontiguousarray(blocks[:, start : start + 2]).view(np.float16).astype(np.float32)


def _q2_k(blocks: np.ndarray) -> np.ndarray:
    # block_q2_K: scales[16] (low nibble scale, high nibble min), qs[64], d, dmin.
    n = len(blocks)
    scales, qs = blocks[:, :16], blocks[:, 16:80]
    d, dmin = _f16(blocks, 80), _f16(blocks, 82)
    dl = (d * (scales & 0xF).astype(np.float32))[:, :, None]
    ml = (dmin * (scales >> 4).astype(np.float32))[:, :, None]
    # Each half of 128 values takes its 32 bytes four times, 2 bits further each time.
    shifts = np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)
    q = ((qs.reshape(n, 2, 1, 32) >> shifts) & 3).astype(np.float32)
    return (dl * q.reshape(n, 16, 16) - ml).reshape(n, 256)


def _q4_k(blocks: np.ndarray) -> np.ndarray:
    # block_q4_K: d, dmin, scales[12] (eight 6-bit scales and mins), qs[128].
    n = len(blocks)
    d, dmin = _f16(blocks, 0), _f16(blocks, 2)
    s = blocks[:, 4:16]
    # ggml's get_scale_min_k4: sub-blocks 0-3 use the low 6 bits of bytes 0-3 / 4-7; sub-blocks
    # 4-7 take their low 4 bits from bytes 8-11 and their top 2 bits from those bytes' spares.
    sc = np.concatenate([s[:, 0:4] & 63, (s[:, 8:12] & 0xF) | ((s[:, 0:4] >> 6) << 4)], axis=1)
    mn = np.concatenate([s[:, 4:8] & 63, (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)], axis=1)
    d1 = (d * sc.astype(np.float32))[:, :, None]
    m1 = (dmin * mn.astype(np.float32))[:, :, None]
    # Each 32 bytes give 64 values: low nibbles first, then high nibbles.
    shifts = np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)
    q = ((blocks[:, 16:144].reshape(n, 4, 1, 32) >> shifts) & 0xF).astype(np.float32)
    return (d1 * q.reshape(n, 8, 32) - m1).reshape(n, 256)


def _q6_k(blocks: np.ndarray) -> np.ndarray:
    # block_q6_K: ql[128] (low 4 bits), qh[64] (high 2 bits), scales[16] (int8), d.
    n = len(blocks)
    ql, qh = blocks[:, :128], blocks[:, 128:192]
    scales = blocks[:, 192:208].view(np.int8).astype(np.float32)
    d = _f16(blocks, 208)
    # Per half of 128 values: 64 ql bytes give values 0-63 (low nibbles) and 64-127 (high
    # nibbles); 32 qh bytes give the top bits of all four 32-value quarters, 2 bits each.
    low = (ql.reshape(n, 2, 1, 64) >> np.array([0, 4], np.uint8).reshape(1, 1, 2, 1)) & 0xF
    high = (qh.reshape(n, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)) & 3
    q = (low.reshape(n, 2, 4, 32) | (high << 4)).astype(np.int8) - np.int8(32)
    return ((d * scales)[:, :, None] * q.reshape(n, 16, 16).astype(np.float32)).reshape(n, 256)


_K_QUANTS = {Q2_K: _q2_k, Q4_K: _q4_k, Q6_K: _q6_k}
