"""GGML's block-quantized weight formats (what GGUF files hold): their bytes, a plain numpy
dequantization of each, and round-to-nearest quantizers for three of them. (How the linear
layers hold and run them: `model/weights/block_quant.py`.)

A row of a matrix is cut into blocks of `BLOCK_TYPES[name].weights` weights, each stored in
`BLOCK_TYPES[name].bytes` bytes: float16 scales and small integer codes. Per block:

- Q8_0: d, 32 int8 q; w = d * q.
- Q4_0: d, 16 bytes of nibbles (weight i the low nibble of byte i, weight 16 + i its high
  one); w = d * (n - 8).  Q4_1: d, m, the nibbles; w = d * n + m.
- Q5_0 / Q5_1: as Q4_0 / Q4_1 with a fifth bit per weight (bit i of a 32-bit word before the
  nibbles): w = d * (n - 16), or d * n + m.
- Q4_K (256 weights): d, dmin, 12 bytes packing eight 6-bit scales and eight 6-bit mins (one
  pair per 32 weights), 128 bytes of nibbles (32 bytes per two sub-blocks: the first one's
  low nibbles, the second's high ones); w = d * scale_j * n - dmin * min_j.
- Q5_K: as Q4_K, with 32 bytes of fifth bits (bit j of byte l: weight l of sub-block j) before
  the nibbles.
- Q6_K (256 weights): 128 bytes of low nibbles, 64 bytes of 2-bit high parts, 16 int8 scales
  (one per 16 weights), d last; w = d * scale_i * (n - 32).

`dequantize_blocks` is the reference (tested equal to `gguf.quants.dequantize`); `quantize`
writes Q8_0, Q4_0 and Q4_K from float32 rows as llama.cpp's reference quantizers do, rounding
to nearest (for Q4_K without the search over scales and mins that llama.cpp adds).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

QK = 32    # weights in a block of the 32-weight types
QK_K = 256  # weights in a super-block of the K-quants


class BlockType(NamedTuple):
    weights: int  # weights per block
    bytes: int    # bytes per block


BLOCK_TYPES = {
    "Q8_0": BlockType(QK, 2 + QK),
    "Q4_0": BlockType(QK, 2 + QK // 2),
    "Q4_1": BlockType(QK, 4 + QK // 2),
    "Q5_0": BlockType(QK, 6 + QK // 2),
    "Q5_1": BlockType(QK, 8 + QK // 2),
    "Q4_K": BlockType(QK_K, 4 + 12 + QK_K // 2),
    "Q5_K": BlockType(QK_K, 4 + 12 + QK_K // 8 + QK_K // 2),
    "Q6_K": BlockType(QK_K, QK_K // 2 + QK_K // 4 + QK_K // 16 + 2),
}


def block_type(type_name: str) -> BlockType:
    """BLOCK_TYPES[type_name], or a ValueError naming the types there are."""
    if type_name not in BLOCK_TYPES:
        raise ValueError(f"unsupported block type {type_name!r} (supported: "
                         f"{', '.join(BLOCK_TYPES)})")
    return BLOCK_TYPES[type_name]


def as_blocks(type_name: str, raw: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """raw (the matrix's bytes, rows one after another) as uint8 [blocks, bytes per block],
    checked against shape (out, in)."""
    kind = block_type(type_name)
    out, k = shape
    if k % kind.weights:
        raise ValueError(f"{type_name} rows hold whole blocks of {kind.weights} weights; "
                         f"a row of {k} does not")
    raw = np.asarray(raw).view(np.uint8).reshape(-1)
    expected = out * (k // kind.weights) * kind.bytes
    if raw.size != expected:
        raise ValueError(f"{type_name} {shape}: {expected} bytes expected, got {raw.size}")
    return raw.reshape(-1, kind.bytes)


def dequantize_blocks(type_name: str, raw: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The float32 matrix [out, in] that raw (type_name blocks, as stored) stands for."""
    blocks = as_blocks(type_name, raw, shape)
    return DEQUANTIZERS[type_name](blocks).reshape(shape)


# --------------------------------------------------------------------------- codes and scales
# Each format's integer codes and scales, read out of its bytes: the dequantizers below and the
# kernels' repacking (`model/weights/block_quant.py`) share them.


def half(blocks: np.ndarray, at: int) -> np.ndarray:
    """The float16 at byte `at` of each block, as float32 [blocks, 1]."""
    return blocks[:, at:at + 2].copy().view(np.float16).astype(np.float32)


def nibbles(qs: np.ndarray) -> np.ndarray:
    """Bytes [blocks, n] -> uint8 [blocks, 2n]: the n low nibbles, then the n high ones."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=1)


def fifth_bits(qh: np.ndarray, count: int) -> np.ndarray:
    """The 32-weight types' high bits: bit i of the little-endian word qh [blocks, 4], as
    uint8 [blocks, count] of 0 or 16."""
    return np.unpackbits(qh, axis=1, bitorder="little")[:, :count] << 4


def codes_q8_0(b):
    return b[:, 2:].view(np.int8).astype(np.int16)


def codes_q4_0(b):
    return nibbles(b[:, 2:]).astype(np.int16) - 8


def unsigned_q5_0(b):
    return nibbles(b[:, 6:]) | fifth_bits(b[:, 2:6], QK)


def codes_q4_1(b):
    return nibbles(b[:, 4:])


def codes_q5_0(b):
    return unsigned_q5_0(b).astype(np.int16) - 16


def codes_q5_1(b):
    return nibbles(b[:, 8:]) | fifth_bits(b[:, 4:8], QK)


def k_scales(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K's and Q5_K's 12 bytes [blocks, 12] -> (scales, mins), uint8 [blocks, 8] of 6 bits:
    sub-blocks 0-3 in the low 6 bits of bytes 0-3 (scales) and 4-7 (mins); sub-blocks 4-7
    from bytes 8-11 (low nibble: scale, high: min) with their top 2 bits in the top bits of
    bytes 0-3 (scales) and 4-7 (mins)."""
    low, mid, top = packed[:, 0:4], packed[:, 4:8], packed[:, 8:12]
    scales = np.concatenate([low & 63, (top & 0x0F) | ((low >> 6) << 4)], axis=1)
    mins = np.concatenate([mid & 63, (top >> 4) | ((mid >> 6) << 4)], axis=1)
    return scales, mins


def k_nibbles(qs: np.ndarray) -> np.ndarray:
    """Q4_K's / Q5_K's 128 bytes -> uint8 [blocks, 256]: each 32 bytes give two sub-blocks,
    their low nibbles then their high ones."""
    return nibbles(qs.reshape(-1, 32)).reshape(qs.shape[0], QK_K)


def codes_q4_k(b):
    return k_nibbles(b[:, 16:])


def codes_q5_k(b):
    high = np.unpackbits(b[:, 16:48, None], axis=2, bitorder="little")  # [blocks, l, j]
    return k_nibbles(b[:, 48:]) | (high.transpose(0, 2, 1).reshape(-1, QK_K) << 4)


def codes_q6_k(b):
    return unsigned_q6_k(b).astype(np.int16) - 32


def unsigned_q6_k(b):
    """Q6_K's 6-bit codes (before the 32 is taken off): each half of 128 weights takes 64 bytes
    of ql (low nibbles for its weights 0-63, high ones for 64-127) and 32 bytes of qh (bits 2s,
    2s+1 for its weights 32s + l)."""
    ql, qh = b[:, :128].reshape(-1, 2, 64), b[:, 128:192].reshape(-1, 2, 32)
    low = np.concatenate([ql & 0x0F, ql >> 4], axis=2)  # [blocks, half, 128]
    high = np.concatenate([(qh >> s) & 3 for s in (0, 2, 4, 6)], axis=2)
    return (low | (high << 4)).reshape(-1, QK_K)


# --------------------------------------------------------------------------- dequantizers


def dequantize_q8_0(b):
    return half(b, 0) * codes_q8_0(b)


def dequantize_q4_0(b):
    return half(b, 0) * codes_q4_0(b)


def dequantize_q4_1(b):
    return half(b, 0) * codes_q4_1(b) + half(b, 2)


def dequantize_q5_0(b):
    return half(b, 0) * codes_q5_0(b)


def dequantize_q5_1(b):
    return half(b, 0) * codes_q5_1(b) + half(b, 2)


def dequantize_q4_k(b):
    return k_dequantize(b, codes_q4_k(b))


def dequantize_q5_k(b):
    return k_dequantize(b, codes_q5_k(b))


def k_dequantize(b, codes):
    """w = d * scale_j * n - dmin * min_j, per sub-block j of 32 (Q4_K, Q5_K)."""
    scales, mins = k_scales(b[:, 4:16])
    step = (half(b, 0) * scales)[:, :, None]   # [blocks, 8, 1]
    low = (half(b, 2) * mins)[:, :, None]
    return (step * codes.reshape(-1, 8, QK) - low).reshape(-1, QK_K)


def dequantize_q6_k(b):
    step = (half(b, 208) * b[:, 192:208].view(np.int8))[:, :, None]  # [blocks, 16, 1]
    return (step * codes_q6_k(b).reshape(-1, 16, 16)).reshape(-1, QK_K)


DEQUANTIZERS = {
    "Q8_0": dequantize_q8_0, "Q4_0": dequantize_q4_0, "Q4_1": dequantize_q4_1,
    "Q5_0": dequantize_q5_0, "Q5_1": dequantize_q5_1, "Q4_K": dequantize_q4_k,
    "Q5_K": dequantize_q5_k, "Q6_K": dequantize_q6_k,
}


# --------------------------------------------------------------------------- quantizers

QUANTIZABLE = ("Q8_0", "Q4_0", "Q4_K")


def quantize(type_name: str, w: np.ndarray) -> np.ndarray:
    """w float32 [out, in] (in a multiple of the type's block) as type_name's bytes, uint8
    [out, bytes per row]: what a GGUF file would hold."""
    if type_name not in QUANTIZABLE:
        raise ValueError(f"quantize writes {', '.join(QUANTIZABLE)}, not {type_name!r}")
    kind = BLOCK_TYPES[type_name]
    out, k = w.shape
    if k % kind.weights:
        raise ValueError(f"{type_name} needs rows of whole {kind.weights}-weight blocks, "
                         f"got {k}")
    blocks = np.ascontiguousarray(w, np.float32).reshape(-1, kind.weights)
    raw = QUANTIZERS[type_name](blocks)
    return raw.reshape(out, (k // kind.weights) * kind.bytes)


def round_away(x: np.ndarray) -> np.ndarray:
    """C's roundf: to nearest, halves away from zero."""
    return np.copysign(np.floor(np.abs(x) + np.float32(0.5)), x)


def inverse(d: np.ndarray) -> np.ndarray:
    """1 / d, 0 where d is 0 (an all-zero block)."""
    return np.divide(np.float32(1.0), d, out=np.zeros_like(d), where=d != 0)


def as_half_bytes(d: np.ndarray) -> np.ndarray:
    """float32 [blocks, n] as float16 bytes [blocks, 2n]."""
    return d.astype(np.float16).view(np.uint8)


def quantize_q8_0(x):
    """d = max|x| / 127, q = round(x / d) (llama.cpp's quantize_row_q8_0_ref)."""
    d = np.abs(x).max(axis=1, keepdims=True) / np.float32(127)
    q = round_away(x * inverse(d)).astype(np.int8)
    return np.concatenate([as_half_bytes(d), q.view(np.uint8)], axis=1)


def quantize_q4_0(x):
    """d = -(the value of largest magnitude) / 8, n = trunc(x / d + 8.5) up to 15
    (quantize_row_q4_0_ref: the extreme maps to code 0, -8 d)."""
    extreme = np.take_along_axis(x, np.abs(x).argmax(axis=1)[:, None], axis=1)
    d = extreme / np.float32(-8)
    n = np.minimum(np.trunc(x * inverse(d) + np.float32(8.5)), 15).astype(np.uint8)
    return np.concatenate([as_half_bytes(d), n[:, :16] | (n[:, 16:] << 4)], axis=1)


def quantize_q4_k(x):
    """Per sub-block of 32: offset min(0, min x), step (max x - that) / 15; the steps and
    offsets as 6-bit multiples of d = max step / 63 and dmin = max offset / 63; then codes
    round((x + dmin * min_j) / (d * scale_j)) in 0..15 (quantize_row_q4_K_ref's last steps)."""
    sub = x.reshape(-1, 8, QK)
    low = np.minimum(sub.min(axis=2), 0)                       # [blocks, 8], <= 0
    step = (sub.max(axis=2) - low) / np.float32(15)
    d = step.max(axis=1, keepdims=True) / np.float32(63)
    dmin = -low.min(axis=1, keepdims=True) / np.float32(63)
    scales = np.minimum(round_away(step * inverse(d)), 63).astype(np.uint8)
    mins = np.minimum(round_away(-low * inverse(dmin)), 63).astype(np.uint8)
    sub_d = (as_stored(d) * scales)[:, :, None]    # the float16 d and dmin, as read back
    sub_min = (as_stored(dmin) * mins)[:, :, None]
    n = np.clip(round_away((sub + sub_min) * inverse(sub_d)), 0, 15).astype(np.uint8)
    pairs = n.reshape(-1, 4, 2, QK)                             # sub-blocks 2c, 2c + 1
    qs = (pairs[:, :, 0] | (pairs[:, :, 1] << 4)).reshape(-1, QK_K // 2)
    return np.concatenate([as_half_bytes(d), as_half_bytes(dmin), pack_k_scales(scales, mins),
                           qs], axis=1)


def as_stored(d: np.ndarray) -> np.ndarray:
    """float32 d rounded to the float16 a block stores, as float32."""
    return d.astype(np.float16).astype(np.float32)


def pack_k_scales(scales: np.ndarray, mins: np.ndarray) -> np.ndarray:
    """`k_scales` inverted: eight 6-bit scales and mins [blocks, 8] -> 12 bytes."""
    low = (scales[:, :4] & 63) | ((scales[:, 4:] >> 4) << 6)
    mid = (mins[:, :4] & 63) | ((mins[:, 4:] >> 4) << 6)
    top = (scales[:, 4:] & 0x0F) | ((mins[:, 4:] & 0x0F) << 4)
    return np.concatenate([low, mid, top], axis=1).astype(np.uint8)


QUANTIZERS = {"Q8_0": quantize_q8_0, "Q4_0": quantize_q4_0, "Q4_K": quantize_q4_k}
