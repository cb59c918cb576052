"""Weight matrices in fewer bytes: int8 with a scale per output channel, or bfloat16.

A decode step reads every weight once per token, so it runs at the speed memory delivers them:
int8 moves a quarter of float32's bytes, bfloat16 half. The KV cache and every sum stay
float32. Where a kernel multiplies float32 activations, it widens each weight as it reads it
(`model/layers/linear.py`), an int8 by a conversion, a bfloat16 by a 16-bit shift (its bits are the
top half of the float32 of the same value); the int8 and bfloat16 dot-product instructions instead
take the activations rounded to their own type (`model/kernels/int8_gemm.py`,
`model/kernels/bf16_gemm.py`).

`Int8Weight`: each row (output channel) w[c] is stored as round(w[c] / s[c]) in [-127, 127],
with s[c] = max|w[c]| / 127, so every element is off by at most s[c] / 2. The dot product runs
on the integers and is scaled once at the end: x . w[c] ~ s[c] * (x . q[c]). `BF16Weight`:
round to nearest, ties to even, as torch's `.to(torch.bfloat16)`; a relative error of at most
2**-9 per element. Both also stand in for the token embedding, which GPT-2 ties to its LM head:
`gather_rows` widens the rows a step looks up.

`PackedF32Weight` is float32 itself, only re-laid out (`pack_float32`) for the AVX-512 kernel
that reads 16 outputs' weights as one vector (`model/layers/linear.py`); it replaces the `[out, in]`
matrix, never sits beside it. `PackedBF16Weight` is the same for bfloat16 where the CPU has
AVX512_BF16's dot product (`pack_bfloat16`, `model/kernels/bf16_dot.py`): its kernel multiplies
bfloat16 by bfloat16, so the activations are rounded to bfloat16 too (`round_to_bfloat16`).

`BlockWeight` (`model/weights/block_quant.py`) holds GGML's block formats (a GGUF file's Q4_0, Q4_K,
..., or `--quantization q8_0 | q4_0 | q4_k` on the fly): repacked for its own kernels
(`model/kernels/block_gemm.py`), and gathered and dequantized by its own methods. A fused matrix whose members a GGUF file stores
in different block types is a `StackedWeight` of them (`model/weights/stacked.py`).

`dequantize` (plain numpy) turns any of them back into the float32 matrix it stands for: the kernels
are tested against `gpt2_reference.linear` on it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, fields, replace

import numpy as np
from numba import njit, types
from numba.extending import overload

from nanovllm.model.weights.adapted import AdaptedWeight
from nanovllm.model.weights.block_quant import BlockWeight, from_float
from nanovllm.model.weights.precision import BLOCK_QUANTIZATIONS
from nanovllm.model.weights.stacked import StackedWeight

INT8_MAX = 127  # symmetric: -128 is never used, so -q is always representable
# The W8A8 kernels' layout of an int8 matrix (`pack_int8`): blocks of BLOCK output columns,
# each a run of groups of GROUP consecutive k for all its columns (BLOCK_BYTES bytes a group).
BLOCK, GROUP = 16, 4
BLOCK_BYTES = BLOCK * GROUP
# The bfloat16 kernel's layout (`pack_bfloat16`): the same blocks, in pairs of consecutive k
# (16 outputs x 2 bfloat16 = 64 bytes a pair, one vector).
PAIR = 2


@dataclass(slots=True)
class Int8Weight:
    packed: np.ndarray  # int8 [blocks, groups, BLOCK, GROUP]: the rows q as `pack_int8` lays them
    scale: np.ndarray   # float32 [out]: row c stands for q[c] * scale[c]
    shape: tuple[int, int]  # (out, in) of q
    sums: np.ndarray = field(init=False)  # int32 [out]: sum(q[c]), for the W8A8 kernels' offset

    def __post_init__(self):
        # The W8A8 kernels read packed, scale and sums through raw pointers: contiguous.
        self.packed = np.ascontiguousarray(self.packed, np.int8)
        self.scale = np.ascontiguousarray(self.scale, np.float32)
        self.sums = np.ascontiguousarray(
            self.packed.sum(axis=(1, 3), dtype=np.int32).reshape(-1)[:self.shape[0]])

    @classmethod
    def from_rows(cls, q: np.ndarray, scale: np.ndarray) -> Int8Weight:
        """The weight whose rows are q [out, in] (int8), scaled by scale [out]."""
        return cls(pack_int8(q), scale, q.shape)

    def rows(self, start: int = 0, end: int | None = None) -> np.ndarray:
        """q[start:end], the int8 rows, as a new array."""
        return self.take(np.arange(self.shape[0])[start:end])

    def take(self, ids: np.ndarray) -> np.ndarray:
        """q[ids], the int8 rows, as a new array (the packed blocks read in place)."""
        picked = self.packed[ids // BLOCK, :, ids % BLOCK, :]  # [len(ids), groups, GROUP]
        return picked.reshape(len(ids), picked.shape[1] * GROUP)[:, :self.shape[1]]

    @property
    def q(self) -> np.ndarray:
        return self.rows()

    @property
    def nbytes(self) -> int:
        return self.packed.nbytes + self.scale.nbytes + self.sums.nbytes


@dataclass(slots=True)
class BF16Weight:
    bits: np.ndarray   # uint16 [out, in]: the top 16 bits of each float32

    @property
    def shape(self) -> tuple[int, int]:
        return self.bits.shape

    @property
    def nbytes(self) -> int:
        return self.bits.nbytes


@dataclass(slots=True)
class PackedF32Weight:
    packed: np.ndarray  # float32 [blocks, in, BLOCK]: the rows as `pack_float32` lays them
    shape: tuple[int, int]  # (out, in)

    @classmethod
    def from_rows(cls, w: np.ndarray) -> PackedF32Weight:
        """The weight whose rows are w [out, in] (float32)."""
        return cls(pack_float32(w), w.shape)

    def rows(self, start: int = 0, end: int | None = None) -> np.ndarray:
        """w[start:end], float32, as a new array."""
        end = self.shape[0] if end is None else min(end, self.shape[0])
        first, last = start // BLOCK, -(-end // BLOCK)
        blocks = self.packed[first:last].transpose(0, 2, 1).reshape(-1, self.shape[1])
        return blocks[start - first * BLOCK:end - first * BLOCK]

    def take(self, ids: np.ndarray) -> np.ndarray:
        """w[ids], float32, as a new array (the packed blocks read in place)."""
        ids = np.asarray(ids)
        return self.packed[ids // BLOCK, :, ids % BLOCK]

    @property
    def nbytes(self) -> int:
        return self.packed.nbytes


@dataclass(slots=True)
class PackedBF16Weight:
    packed: np.ndarray  # uint16 [blocks, pairs, BLOCK, PAIR]: bfloat16 bits as `pack_bfloat16`
    shape: tuple[int, int]  # (out, in)

    @classmethod
    def from_bits(cls, bits: np.ndarray) -> PackedBF16Weight:
        """The weight whose rows are the bfloat16 bits [out, in] (uint16)."""
        return cls(pack_bfloat16(bits), bits.shape)

    def rows(self, start: int = 0, end: int | None = None) -> np.ndarray:
        """bits[start:end], uint16, as a new array."""
        return self.take(np.arange(self.shape[0])[start:end])

    def take(self, ids: np.ndarray) -> np.ndarray:
        """bits[ids], uint16, as a new array (the packed blocks read in place)."""
        ids = np.asarray(ids)
        picked = self.packed[ids // BLOCK, :, ids % BLOCK, :]  # [len(ids), pairs, PAIR]
        return picked.reshape(len(ids), picked.shape[1] * PAIR)[:, :self.shape[1]]

    @property
    def nbytes(self) -> int:
        return self.packed.nbytes


Weight = (np.ndarray | Int8Weight | BF16Weight | PackedF32Weight | PackedBF16Weight | BlockWeight
          | StackedWeight)


def attends_in_bf16(w: Weight) -> bool:
    """Whether a layer whose attention projection is w attends with bfloat16 products
    (`bf16_attention`): its weights are packed for the avx512bf16 kernel (`PackedBF16Weight`),
    which the loader does for bfloat16 models where this CPU runs it
    (`linear.host_packs_bfloat16`). An adapted weight attends as its base does."""
    return isinstance(w.base if isinstance(w, AdaptedWeight) else w, PackedBF16Weight)


def quantize_int8(w: np.ndarray) -> Int8Weight:
    """Per-row symmetric int8 of a float32 matrix [out, in] (an all-zero row gets scale 0)."""
    peak = np.abs(w).max(axis=1)
    scale = (peak / np.float32(INT8_MAX)).astype(np.float32)
    inverse = np.divide(np.float32(1.0), scale, out=np.zeros_like(scale), where=scale > 0)
    q = np.rint(w * inverse[:, None])  # rint: ties to even
    return Int8Weight.from_rows(np.clip(q, -INT8_MAX, INT8_MAX).astype(np.int8), scale)


def pack_int8(q: np.ndarray) -> np.ndarray:
    """q [out, in] as int8 [blocks, groups, BLOCK, GROUP]: packed[b, g, j, i] = q[BLOCK * b + j,
    GROUP * g + i], zero beyond q's edges. One group of a block is what a vector dot-product
    instruction multiplies by GROUP bytes of x broadcast to all lanes
    (`model/kernels/int8_dot.py`)."""
    return pack_groups(np.asarray(q, np.int8), GROUP)


def pack_bfloat16(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bits [out, in] as uint16 [blocks, pairs, BLOCK, PAIR], laid out as `pack_int8`
    with groups of PAIR: one pair of a block is what `vdpbf16ps` multiplies by two bfloat16 of
    x broadcast to all lanes (`model/kernels/bf16_dot.py`)."""
    return pack_groups(np.asarray(bits, np.uint16), PAIR)


def pack_groups(a: np.ndarray, group: int) -> np.ndarray:
    """a [out, in] as [blocks, groups, BLOCK, group]: packed[b, g, j, i] = a[BLOCK * b + j,
    group * g + i], zero beyond a's edges."""
    n, k = a.shape
    blocks, groups = -(-n // BLOCK), -(-k // group)
    padded = np.zeros((blocks * BLOCK, groups * group), a.dtype)
    padded[:n, :k] = a
    return np.ascontiguousarray(padded.reshape(blocks, BLOCK, groups, group).transpose(0, 2, 1, 3))


def pack_float32(w: np.ndarray) -> np.ndarray:
    """w [out, in] as float32 [blocks, in, BLOCK]: packed[b, k, j] = w[BLOCK * b + j, k], zero
    beyond w's last row. One k of a block is the vector of BLOCK outputs' weights the packed
    kernel multiplies by one x broadcast to every lane (`model/kernels/f32_dot.py`
    `broadcast_tile`)."""
    n, k = w.shape
    blocks = -(-n // BLOCK)
    packed = np.zeros((blocks, k, BLOCK), np.float32)
    for b in range(blocks):  # (a block at a time: no second full-size copy)
        part = w[BLOCK * b:BLOCK * (b + 1)]
        packed[b, :, :part.shape[0]] = part.T
    return packed


def to_bfloat16(w: np.ndarray) -> BF16Weight:
    """A finite float32 array rounded to the nearest bfloat16 (ties to even), as bits."""
    return BF16Weight(bfloat16_bits(w))


def bfloat16_bits(x: np.ndarray) -> np.ndarray:
    """A finite float32 array rounded to the nearest bfloat16 (ties to even), as uint16 bits."""
    bits = np.ascontiguousarray(x, np.float32).view(np.uint32)
    return ((bits + np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))) >> 16).astype(np.uint16)


def round_to_bfloat16(x: np.ndarray) -> np.ndarray:
    """x (float32, finite) rounded to the nearest bfloat16, as float32: what the bfloat16 kernel
    multiplies instead of x."""
    return bf16_to_float32(bfloat16_bits(x))


def bf16_to_float32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bits (uint16) as float32 values, exactly."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def dequantize(w: Weight, start: int = 0, end: int | None = None) -> np.ndarray:
    """Rows start:end of the float32 matrix `w` stands for (a float32 matrix: itself)."""
    if isinstance(w, Int8Weight):
        return w.rows(start, end).astype(np.float32) * w.scale[start:end, None]
    if isinstance(w, BF16Weight):
        return bf16_to_float32(w.bits[start:end])
    if isinstance(w, PackedF32Weight):
        return w.rows(start, end)
    if isinstance(w, PackedBF16Weight):
        return bf16_to_float32(w.rows(start, end))
    if isinstance(w, BlockWeight):
        return w.rows(start, end)
    if isinstance(w, StackedWeight):
        return np.concatenate([dequantize(part) for part in w.parts])[start:end]
    return w[start:end]


def gather_rows(table: Weight, ids: np.ndarray) -> np.ndarray:
    """table[ids] as a new float32 array (the token embedding's lookup)."""
    if isinstance(table, Int8Weight):
        return table.take(np.asarray(ids)).astype(np.float32) * table.scale[ids, None]
    if isinstance(table, BF16Weight):
        return bf16_to_float32(np.take(table.bits, ids, axis=0))
    if isinstance(table, PackedF32Weight):
        return table.take(ids)
    if isinstance(table, PackedBF16Weight):
        return bf16_to_float32(table.take(ids))
    if isinstance(table, BlockWeight):
        return table.take(ids)
    return np.take(table, ids, axis=0)


def convert_matrix(w: Weight, dtype: str = "auto", quantization: str | None = None) -> Weight:
    """A float32 weight matrix in the storage the options ask for. A block format needs rows of
    whole blocks: q4_k falls back to q4_0 where rows are not whole 256-input super-blocks (as
    llama.cpp's quantizer falls back to a 32-weight type), and a row of inputs not a multiple
    of 32 to int8. Block weights (a GGUF file's) stay as stored unless the options ask for
    another storage; a stacked matrix's parts are converted each."""
    if isinstance(w, StackedWeight):
        return StackedWeight([convert_matrix(part, dtype, quantization) for part in w.parts])
    if isinstance(w, BlockWeight):
        if (dtype, quantization) == ("auto", None) or (
                BLOCK_QUANTIZATIONS.get(quantization) == w.type_name):
            return w
        w = w.rows()
    if quantization in BLOCK_QUANTIZATIONS:
        type_name = BLOCK_QUANTIZATIONS[quantization]
        if type_name == "Q4_K" and w.shape[1] % 256:
            type_name = "Q4_0"
        if w.shape[1] % 32 == 0:
            return from_float(type_name, w)
        return quantize_int8(w)
    if quantization == "int8":
        return quantize_int8(w)
    if dtype == "bfloat16":
        return to_bfloat16(w)
    return w


def pack_float32_weights(weights, packed_one=lambda w: None):
    """Any model's weights (`GPT2Weights`, `LlamaWeights`) with every float32 matrix (a field
    typed `Weight`) replaced by its `PackedF32Weight`, in place; a tied matrix stays one object.
    `packed_one(w)` is called on each matrix once it is packed (to release its pages)."""
    def packed(item):
        if isinstance(item, np.ndarray) and item.dtype == np.float32:
            new = PackedF32Weight.from_rows(item)
            packed_one(item)
            return new
        return None

    return pack_weights(weights, packed)


def pack_bfloat16_weights(weights):
    """Any model's weights with every `BF16Weight` replaced by its `PackedBF16Weight`, in place;
    a tied matrix stays one object."""
    return pack_weights(weights, lambda item: PackedBF16Weight.from_bits(item.bits)
                        if isinstance(item, BF16Weight) else None)


def pack_weights(weights, packed):
    """weights with each field typed `Weight` whose value `packed(value)` packs (not None)
    replaced by that, in place, in lists of layers too; each object packed once, so a tied
    matrix stays one object."""
    done = {}

    def pack(value):
        if hasattr(value, "__dataclass_fields__"):
            for f in fields(value):
                item = getattr(value, f.name)
                if f.type == "Weight" and id(item) in done:
                    setattr(value, f.name, done[id(item)])
                elif f.type == "Weight" and (new := packed(item)) is not None:
                    done[id(item)] = new
                    setattr(value, f.name, new)
                elif isinstance(item, list):
                    for part in item:
                        pack(part)
        return value

    return pack(weights)


def dequantize_weights(weights):
    """Any model's weights (`GPT2Weights`, `LlamaWeights`) with every matrix back in float32,
    what the reference model runs on: the dataclass copied, its lists of layers too."""
    def plain(value):
        if isinstance(value, Int8Weight | BF16Weight | PackedF32Weight | PackedBF16Weight
                      | BlockWeight | StackedWeight):
            return dequantize(value)
        if isinstance(value, list):
            return [plain(v) for v in value]
        if hasattr(value, "__dataclass_fields__"):
            return replace(value, **{f.name: plain(getattr(value, f.name)) for f in fields(value)})
        return value

    return plain(weights)


def matrix_formats(weights) -> dict[str, int]:
    """How many of a model's matrices (`matrices()`: those a decode step multiplies by) are
    stored in each format: "float32", "bfloat16", "int8" or a GGML block type ("Q4_K"); a
    stacked matrix counts each of its parts."""
    def formats(w) -> list[str]:
        if isinstance(w, StackedWeight):
            return [f for part in w.parts for f in formats(part)]
        if isinstance(w, BlockWeight):
            return [w.type_name]
        if isinstance(w, Int8Weight):
            return ["int8"]
        return ["bfloat16" if isinstance(w, BF16Weight | PackedBF16Weight) else "float32"]

    return dict(Counter(f for w in weights.matrices() for f in formats(w.base if isinstance(w, AdaptedWeight) else w)))


# --------------------------------------------------------------------------- inside kernels


def widen(w):
    """An element of a weight matrix, as the kernels read it, as float32: float32 as it is,
    int8 converted, bfloat16 bits (uint16) shifted into the top of a float32. (Plain Python
    under NUMBA_DISABLE_JIT=1; compiled, the overload below.)"""
    if isinstance(w, np.uint16):
        return (np.uint32(w) << np.uint32(16)).view(np.float32)
    return np.float32(w)


@overload(widen, inline="always")
def _widen(w):
    if w == types.uint16:
        return lambda w: bf16_bits_to_float32(w)
    if w == types.int8:
        return lambda w: np.float32(w)
    return lambda w: w


@njit(cache=True, nogil=True, inline="always")
def bf16_bits_to_float32(x):
    return np.uint32(np.uint32(x) << 16).view(np.float32)  # (numba widens a shift to 64 bits)


def kernel_array(w: Weight) -> np.ndarray:
    """The array a kernel reads for `w`: its float32 matrix, its int8 values or its bf16 bits."""
    if isinstance(w, Int8Weight):
        return w.q
    if isinstance(w, BF16Weight):
        return w.bits
    if isinstance(w, PackedF32Weight | PackedBF16Weight | BlockWeight):
        return w.rows()
    return w
