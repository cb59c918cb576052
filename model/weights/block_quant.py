"""Block-quantized weight matrices in memory: `BlockWeight`, GGML's blocks (`ggml_blocks.py`)
repacked once, at load, into the layout the block kernels stream (`model/kernels/block_gemm.py`), as
llama.cpp repacks them for its own CPU kernels. No float32 copy of the matrix is kept.

The repacked matrix is uint8 [panels, super-blocks, panel bytes]: a panel is 16 consecutive
output rows (the lanes of one 64-byte vector of int32 sums), a super-block `Layout.span`
consecutive inputs. One panel's super-block holds its header (the scales, float16 as the file
has them, and the K-quants' small integer scales) and then its codes, each code stored
unsigned, in groups of 4 inputs for all 16 outputs (64 bytes: `[output][input]`), the shape a
`vpdpbusd` multiplies by 4 activation bytes broadcast to every lane. 4-bit codes keep their 4
bits: each 64-byte line holds one group in its low nibbles and the group `sub / 8` later in
its high ones. 6-bit codes (Q6_K, 16-input sub-blocks of 4 groups) keep their 6 bits: a
sub-block's low 4 bits as the 4-bit codes are, then one line of their top 2 bits, group n in
bits 2n and 2n + 1. Every row of a panel is thus read as one sequential stream.

What each type becomes (`LAYOUTS`): a weight is `d * (u - offset)` (Q8_0, Q4_0, Q5_0),
`d * u + m` (Q4_1, Q5_1), `d * sc_j * u - dmin * mn_j` (Q4_K, Q5_K) or `d * sc_j * (u - 32)`
(Q6_K), u the stored unsigned code. Q8_0, Q4_0, Q4_1, Q4_K and Q6_K keep their bits exactly
(header and codes alike: the same bits per weight as the file; Q6_K's is a 4-bit file's LM
head and half its value and down matrices); Q5_0, Q5_1 and Q5_K keep their scales but store
each 5-bit code in a byte (a simpler kernel, at more bytes per weight).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from numba import njit, prange

from nanovllm.model.platform.memory import line_aligned
from nanovllm.model.weights import ggml_blocks as g
from nanovllm.model.weights.ggml_blocks import (  # noqa: F401  (this module's interface too)
    BLOCK_TYPES,
    QUANTIZABLE,
    as_blocks,
    dequantize_blocks,
    quantize,
)

PANEL = 16   # outputs a panel interleaves: one int32 vector's lanes
GROUP = 4    # inputs a code group holds per output: what `vpdpbusd` adds up per lane
LINE = PANEL * GROUP  # bytes of one group of codes
ROWS_AT_ONCE = 4096  # output rows repacked at a time (bounds the load's temporary arrays)


class Layout(NamedTuple):
    kind: str    # "sym": d (u - offset); "asym": d u + m; "kmin": d sc u - dmin mn; "ksym"
    bits: int    # 4 (two codes a byte), 6 (4 + 2 bits in two planes) or 8
    sub: int     # inputs per scale (a sub-block)
    span: int    # inputs per super-block (its float16 scales)
    offset: int  # subtracted from u ("sym", "ksym")


LAYOUTS = {
    "Q8_0": Layout("sym", 8, 32, 32, 128),
    "Q4_0": Layout("sym", 4, 32, 32, 8),
    "Q5_0": Layout("sym", 8, 32, 32, 16),
    "Q4_1": Layout("asym", 4, 32, 32, 0),
    "Q5_1": Layout("asym", 8, 32, 32, 0),
    "Q4_K": Layout("kmin", 4, 32, 256, 0),
    "Q5_K": Layout("kmin", 8, 32, 256, 0),
    "Q6_K": Layout("ksym", 6, 16, 256, 32),
}


def float16_fields(layout: Layout) -> int:
    """How many float16 fields each output has per super-block: d, and m or dmin."""
    return 1 if layout.kind in ("sym", "ksym") else 2


def header_bytes(layout: Layout) -> int:
    """A panel's super-block header: float16 d (and m or dmin) per output, then for K-quants
    one byte per output and sub-block (scales; mins after them for "kmin")."""
    small = {"kmin": 2, "ksym": 1}.get(layout.kind, 0) * (layout.span // layout.sub)
    return PANEL * (2 * float16_fields(layout) + small)


def code_bytes(layout: Layout) -> int:
    return PANEL * layout.span * layout.bits // 8


def panel_bytes(layout: Layout) -> int:
    return header_bytes(layout) + code_bytes(layout)


@dataclass(slots=True)
class BlockWeight:
    packed: np.ndarray  # uint8 [panels, super-blocks, panel bytes] (module docstring)
    type_name: str      # GGML's name of the format ("Q4_0", "Q4_K", ...)
    shape: tuple[int, int]  # (out, in)

    def __post_init__(self):
        self.packed = np.ascontiguousarray(self.packed, np.uint8)  # read through raw pointers

    @property
    def layout(self) -> Layout:
        return LAYOUTS[self.type_name]

    @property
    def nbytes(self) -> int:
        return self.packed.nbytes

    def rows(self, start: int = 0, end: int | None = None) -> np.ndarray:
        """The float32 rows start:end the matrix stands for, as a new array."""
        end = self.shape[0] if end is None else min(end, self.shape[0])
        first, last = start // PANEL, -(-end // PANEL)
        dense = unpack_panels(self.packed[first:last], self.layout, self.shape[1])
        return dense[start - first * PANEL:end - first * PANEL]

    def take(self, ids: np.ndarray) -> np.ndarray:
        """The float32 rows ids, as a new array: their whole panels unpacked, their lanes
        kept (the reference: `layers.linear.embedding_rows` reads only each row's lane,
        compiled)."""
        ids = np.asarray(ids, np.int64).reshape(-1)
        if ids.size and not (0 <= ids.min() and ids.max() < self.shape[0]):
            raise IndexError("a row id outside the table")
        panels = unpack_panels(self.packed[ids // PANEL], self.layout, self.shape[1])
        return panels.reshape(ids.size, PANEL, -1)[np.arange(ids.size), ids % PANEL]


def from_gguf(type_name: str, raw: np.ndarray, shape: tuple[int, int]) -> BlockWeight:
    """The weight [out, in] = shape whose rows are `raw` (type_name blocks as a GGUF file stores
    them: uint8 [out, bytes per row], possibly a read-only memory map), repacked."""
    blocks = as_blocks(type_name, raw, shape)
    layout = LAYOUTS[type_name]
    out, k = shape
    per_row = k // BLOCK_TYPES[type_name].weights
    panels = -(-out // PANEL)
    packed = empty_packed(panels, k // layout.span, layout)
    for start in range(0, out, ROWS_AT_ONCE):  # ROWS_AT_ONCE is a multiple of PANEL
        end = min(out, start + ROWS_AT_ONCE)
        part = np.asarray(blocks[start * per_row:end * per_row])
        packed[start // PANEL:-(-end // PANEL)] = pack_panels(type_name, part, end - start, k)
    return BlockWeight(packed, type_name, shape)


def empty_packed(panels: int, supers: int, layout: Layout) -> np.ndarray:
    """An uninitialized `BlockWeight.packed` starting at a cache line, as the kernels' loads of
    whole lines of it want."""
    return line_aligned(panels * supers * panel_bytes(layout)).reshape(
        panels, supers, panel_bytes(layout))


def from_float(type_name: str, w: np.ndarray) -> BlockWeight:
    """w float32 [out, in] quantized to type_name (`ggml_blocks.quantize`) and repacked:
    `--quantization q4_0 | q4_k | q8_0` on a safetensors checkpoint."""
    return from_gguf(type_name, quantize(type_name, w), w.shape)


# --------------------------------------------------------------------------- unpacking


def unpack_panels(packed: np.ndarray, layout: Layout, k: int) -> np.ndarray:
    """Panels [p, supers, panel bytes] -> the float32 rows [p * PANEL, k] they stand for, in
    the order of operations of `ggml_blocks`' dequantizers (so the values are equal)."""
    p, supers = packed.shape[:2]
    nh = float16_fields(layout)
    subs = layout.span // layout.sub
    header = header_bytes(layout)
    halves = packed[:, :, :nh * 2 * PANEL].copy().view(np.float16).astype(np.float32)
    halves = halves.reshape(p, supers, nh, PANEL, 1, 1)          # broadcast over sub, input
    d = halves[:, :, 0]
    small = packed[:, :, nh * 2 * PANEL:header].reshape(p, supers, -1, PANEL)
    u = unpack_codes(packed[:, :, header:], layout)     # [p, s, PANEL, subs, sub]
    if layout.kind == "sym":
        w = d * (u.astype(np.int16) - layout.offset)
    elif layout.kind == "asym":
        w = d * u + halves[:, :, 1]
    elif layout.kind == "kmin":
        sc = small[:, :, :subs].transpose(0, 1, 3, 2)[..., None]   # [p, s, PANEL, subs, 1]
        mn = small[:, :, subs:].transpose(0, 1, 3, 2)[..., None]
        w = (d * sc) * u - halves[:, :, 1] * mn
    else:  # "ksym"
        sc = small.view(np.int8).transpose(0, 1, 3, 2)[..., None]
        w = (d * sc) * (u.astype(np.int16) - layout.offset)
    w = w.astype(np.float32).reshape(p, supers, PANEL, layout.span)
    return w.transpose(0, 2, 1, 3).reshape(p * PANEL, k)


def unpack_codes(code_bytes: np.ndarray, layout: Layout) -> np.ndarray:
    """`interleave_codes` undone: [p, supers, code bytes] -> uint8 [p, supers, PANEL, subs,
    sub]."""
    p, s = code_bytes.shape[:2]
    subs, per_sub = layout.span // layout.sub, layout.sub // GROUP  # sub-blocks, their groups
    if layout.bits == 6:  # per sub-block: its 4-bit lines, then the line of top 2 bits
        lines = code_bytes.reshape(p, s, subs, per_sub // 2 + 1, LINE)
        top = lines[:, :, :, -1:] >> (2 * np.arange(per_sub, dtype=np.uint8))[:, None]
        low = lines[:, :, :, :-1]
        code_bytes = np.concatenate([low & 0x0F, low >> 4], axis=3) | ((top & 3) << 4)
    elif layout.bits == 4:
        lines = code_bytes.reshape(p, s, subs, 1, -1)
        code_bytes = np.concatenate([lines & 0x0F, lines >> 4], axis=3)
    groups = code_bytes.reshape(p, s, layout.span // GROUP, PANEL, GROUP)
    return groups.transpose(0, 1, 3, 2, 4).reshape(p, s, PANEL, layout.span // layout.sub,
                                                   layout.sub)


# --------------------------------------------------------------------------- packing


def pack_panels(type_name: str, blocks: np.ndarray, rows: int, k: int) -> np.ndarray:
    """GGML blocks of `rows` rows of k inputs -> uint8 [panels, super-blocks, panel bytes]."""
    layout = LAYOUTS[type_name]
    halves, small, codes = FIELDS[type_name](blocks)  # one GGML block per super-block
    supers = k // layout.span
    parts = []
    for field in (halves, small) if small.shape[1] else (halves,):  # PANEL outputs side by side
        field = to_panels(field.reshape(rows, supers, -1))     # [panels, supers, PANEL, n]
        parts.append(np.ascontiguousarray(field.transpose(0, 1, 3, 2)).view(np.uint8)
                     .reshape(*field.shape[:2], -1))
    codes = interleave_panels(codes.reshape(rows, supers * layout.span), layout)
    return np.concatenate([*parts, codes], axis=2)


def to_panels(a: np.ndarray) -> np.ndarray:
    """[rows, supers, n] -> [panels, supers, PANEL, n], zero rows past the last."""
    rows = a.shape[0]
    padded = -(-rows // PANEL) * PANEL
    if padded != rows:
        a = np.concatenate([a, np.zeros((padded - rows, *a.shape[1:]), a.dtype)])
    return a.reshape(-1, PANEL, *a.shape[1:]).transpose(0, 2, 1, 3)


def interleave_codes(codes: np.ndarray, layout: Layout) -> np.ndarray:
    """Codes [panels, supers, PANEL, span] (uint8) -> [panels, supers, code bytes]: groups of
    GROUP inputs x PANEL outputs, in input order; 4-bit ones two groups a byte (module
    docstring)."""
    p, s = codes.shape[:2]
    groups = codes.reshape(p, s, PANEL, layout.span // GROUP, GROUP).transpose(0, 1, 3, 2, 4)
    if layout.bits == 8:
        return groups.reshape(p, s, -1)
    per_sub = layout.sub // GROUP
    groups = groups.reshape(p, s, layout.span // layout.sub, per_sub, LINE)
    low = groups & 0x0F
    lines = low[:, :, :, :per_sub // 2] | (low[:, :, :, per_sub // 2:] << 4)
    if layout.bits == 6:
        shifts = (2 * np.arange(per_sub, dtype=np.uint8))[:, None]
        top = np.bitwise_or.reduce((groups >> 4) << shifts, axis=3, keepdims=True)
        lines = np.concatenate([lines, top.astype(np.uint8)], axis=3)
    return lines.reshape(p, s, -1)


def interleave_panels(codes: np.ndarray, layout: Layout) -> np.ndarray:
    """Codes [rows, supers * span] (uint8) -> [panels, supers, code bytes], zero rows past the
    last: `interleave_codes(to_panels(...))` (the reference) in one compiled pass, the bulk of
    a file's load."""
    rows, n = codes.shape
    out = np.zeros((-(-rows // PANEL), n // layout.span, code_bytes(layout)), np.uint8)
    _interleave(np.ascontiguousarray(codes, np.uint8), layout.span, layout.sub, layout.bits, out)
    return out


@njit(cache=True, nogil=True, parallel=True)
def _interleave(codes, span, sub, bits, out):
    rows = codes.shape[0]
    for panel in prange(out.shape[0]):  # each panel's bytes its own: the threads never meet
        lanes = min(PANEL, rows - panel * PANEL)  # the last panel's missing rows stay zero
        for s in range(out.shape[1]):
            for line in range(span // GROUP):  # GROUP inputs for the panel's outputs
                first = s * span + line * GROUP
                # where the line's low (or only) bits go, and (6 bits) its top 2 bits
                at, shift, top_at, top_shift = line * LINE, 0, 0, 0
                if bits != 8:  # a sub-block's first half of lines in low nibbles, then high
                    sub_block, rest = line // (sub // 4), line % (sub // 4)
                    base = sub_block * (sub // 4) * LINE * bits // 8
                    at = base + rest % (sub // 8) * LINE
                    shift = 4 * (rest // (sub // 8))
                    top_at, top_shift = base + (sub // 8) * LINE, 2 * rest  # (6 bits)
                for lane in range(lanes):
                    r = panel * PANEL + lane
                    for j in range(GROUP):
                        code = np.int32(codes[r, first + j])
                        if bits == 6:
                            out[panel, s, top_at + lane * GROUP + j] |= np.uint8(
                                (code >> 4) << top_shift)
                            code &= 0x0F
                        out[panel, s, at + lane * GROUP + j] |= np.uint8(code << shift)


def halves_of(blocks: np.ndarray, *at: int) -> np.ndarray:
    """The float16 fields at the given byte offsets of each block, as uint16 [blocks, n]."""
    return np.concatenate([blocks[:, a:a + 2] for a in at], axis=1).view(np.uint16)


def small(blocks: np.ndarray, n: int) -> np.ndarray:
    return np.zeros((blocks.shape[0], n), np.uint8)


def fields_q8_0(b):
    return halves_of(b, 0), small(b, 0), b[:, 2:] ^ np.uint8(0x80)  # q + 128


def fields_q4_0(b):
    return halves_of(b, 0), small(b, 0), g.nibbles(b[:, 2:])


def fields_q5_0(b):
    return halves_of(b, 0), small(b, 0), g.unsigned_q5_0(b)


def fields_q4_1(b):
    return halves_of(b, 0, 2), small(b, 0), g.codes_q4_1(b)


def fields_q5_1(b):
    return halves_of(b, 0, 2), small(b, 0), g.codes_q5_1(b)


def fields_q4_k(b):
    return halves_of(b, 0, 2), np.concatenate(g.k_scales(b[:, 4:16]), axis=1), g.codes_q4_k(b)


def fields_q5_k(b):
    return halves_of(b, 0, 2), np.concatenate(g.k_scales(b[:, 4:16]), axis=1), g.codes_q5_k(b)


def fields_q6_k(b):
    return halves_of(b, 208), b[:, 192:208], g.unsigned_q6_k(b)


# Per type: GGML blocks (one per super-block) -> (float16 fields as uint16 [blocks, n], small
# scales uint8 [blocks, n'] (K-quants: scales, then mins), codes uint8 [blocks, weights]).
FIELDS = {"Q8_0": fields_q8_0, "Q4_0": fields_q4_0, "Q5_0": fields_q5_0, "Q4_1": fields_q4_1,
          "Q5_1": fields_q5_1, "Q4_K": fields_q4_k, "Q5_K": fields_q5_k, "Q6_K": fields_q6_k}
