"""A linear layer on block-quantized weights (`model/weights/block_quant.BlockWeight`), as stored:
`block_linear(x, w)`.

Each row of x is quantized to int8 per super-block of the weights' layout (32 inputs for the
32-weight types, 256 for K-quants, as llama.cpp's Q8_0 and Q8_K activations): a float32 scale
per super-block, and the int32 sum of the codes of each sub-block, which stands in for the
weights' offsets and mins (`model/kernels/block_dot.py`). Then integer products of codes,
scaled once per sub-block and per super-block, in float32 accumulators.

Kernels, one per instruction set (`model/kernels/block_dot.py`), chosen by the CPU
(`cpu.KernelPath.block`): "avx512vnni", "avxvnni", "avx2", and "portable", plain numba loops
that run wherever numba runs (and, as plain Python, under NUMBA_DISABLE_JIT=1). They compute
the same integer sums; only the float32 additions' order differs. The plain reference is
`gpt2_reference.linear` on the dequantized activations and weights
(tests/model/test_block_gemm.py). The same kernels take every row count: a prefill's rows pass
over each panel of weights while it is in cache. "amx" runs `block_amx.AMX_MIN_ROWS` rows and
more on AMX's tiles, in bfloat16 (`model/kernels/block_amx.py`), and fewer on "avx512vnni".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import config, literally, njit, prange, types
from numba.extending import overload

from nanovllm.model.kernels.block_amx import AMX_MIN_ROWS, amx_linear, request_tiles
from nanovllm.model.kernels.block_amx import LINEARS as AMX_LINEARS
from nanovllm.model.kernels.block_dot import ISAS, ONE_ROW_LEAD, block_panel, tile
from nanovllm.model.kernels.int8_gemm import span_peak
from nanovllm.model.kernels.parallel import (
    chunk_counter,
    claim,
    on_threads,
    split_chunks,
    stream_chunks,
)
from nanovllm.model.kernels.shared import (
    CACHE_LINE,
    as_bias,
    finish,
    first_that_compiles,
    float16_bits_to_float32,
    prefetch_lines,
)
from nanovllm.model.kernels.tiling import store_sums
from nanovllm.model.weights.block_quant import (
    BLOCK_TYPES,
    GROUP,
    LAYOUTS,
    LINE,
    PANEL,
    BlockWeight,
    Layout,
    from_gguf,
    header_bytes,
)

PORTABLE = "portable"
AMX, AMX_FEW_ROWS = "amx", "avx512vnni"  # (the kernel "amx" runs below AMX_MIN_ROWS rows)
KERNELS = (AMX, *ISAS, PORTABLE)
INT8_MAX = 127


@dataclass(slots=True)
class BlockRows:
    """Activations quantized per super-block of a layout: row t's inputs of super-block s
    stand for q[t, s*span:(s+1)*span] * scale[t, s]; sums[t, j] is the sum of sub-block j's
    codes."""
    q: np.ndarray      # int8 [M, K]
    scale: np.ndarray  # float32 [M, K / span]
    sums: np.ndarray   # int32 [M, K / sub]

    def dequantize(self) -> np.ndarray:
        """The float32 rows these stand for."""
        m, k = self.q.shape
        span = k // self.scale.shape[1]
        q = self.q.reshape(m, -1, span).astype(np.float32)
        return (q * self.scale[:, :, None]).reshape(m, k)


def quantize_blocks(x: np.ndarray, layout: Layout) -> BlockRows:
    """x [M, K] float32 quantized per super-block of `layout`."""
    return BlockRows(*quantize(np.ascontiguousarray(x, np.float32), layout.span, layout.sub))


@njit(cache=True, nogil=True)
def quantize(x, span, sub):
    """(codes, scales, sums) of `BlockRows` for x [M, K] float32 C-contiguous, on all threads
    when there is enough of it (`kernels.on_threads`)."""
    m, k = x.shape
    q = np.empty((m, k), np.int8)
    scale = np.empty((m, k // span), np.float32)
    sums = np.empty((m, k // sub), np.int32)
    if on_threads(x.size):
        quantize_rows_parallel(x, span, sub, q, scale, sums)
    else:
        quantize_rows(x, span, sub, q, scale, sums)
    return q, scale, sums


@njit(cache=True, nogil=True)
def quantize_rows(x, span, sub, q, scale, sums):
    """Each span of each row: scale = max|x| / 127, q = round(x / scale) (ties to even), and
    each sub-block's sum of q."""
    for t in range(x.shape[0]):
        quantize_row(x[t], span, sub, q[t], scale[t], sums[t])


@njit(cache=True, nogil=True, parallel=True)
def quantize_rows_parallel(x, span, sub, q, scale, sums):
    for t in prange(x.shape[0]):
        quantize_row(x[t], span, sub, q[t], scale[t], sums[t])


@njit(cache=True, nogil=True, inline="always")
def quantize_row(row, span, sub, q, scale, sums):
    # The layouts' spans and sub-blocks as constants: loops over runs of a length known only at
    # run time did not vectorize.
    if span == 32 and sub == 32:
        quantize_spans(row, 32, 32, q, scale, sums)
    elif span == 256 and sub == 32:
        quantize_spans(row, 256, 32, q, scale, sums)
    elif span == 256 and sub == 16:
        quantize_spans(row, 256, 16, q, scale, sums)
    else:
        quantize_spans(row, span, sub, q, scale, sums)


@njit(cache=True, nogil=True, inline="always")
def quantize_spans(row, span, sub, q, scale, sums):
    """`quantize_rows` for one row. Its spans are index ranges, not slices: an array made for
    each span (its reference counts) cost more than the span's arithmetic."""
    bits = row.view(np.int32)
    for s in range(row.shape[0] // span):
        at = s * span
        d = np.float32(span_peak(bits, at, at + span) / np.float32(INT8_MAX))
        inverse = np.float32(np.float32(1.0) / d) if d > 0 else np.float32(0.0)
        scale[s] = d
        for j in range(at // sub, (at + span) // sub):
            total = np.int32(0)
            for k in range(j * sub, (j + 1) * sub):  # (clamped as integers: it vectorizes)
                v = min(max(np.int32(np.rint(np.float32(row[k] * inverse))), -INT8_MAX),
                        INT8_MAX)
                q[k] = np.int8(v)
                total += v
            sums[j] = total


def block_linear(x: np.ndarray, w: BlockWeight, kernel: str, bias: np.ndarray | None = None,
                 residual: np.ndarray | None = None) -> np.ndarray:
    """x [M, K] float32 (quantized here per super-block) times w [N, K], plus bias [N] -> [M, N]
    float32, on `kernel`. With `residual` ([M, N] float32, C-contiguous) the result is added
    into it in place and it is returned."""
    x = np.ascontiguousarray(x, np.float32)
    out = np.empty((x.shape[0], w.shape[0]), np.float32) if residual is None else residual
    accumulate = residual is not None
    if config.DISABLE_JIT or kernel == PORTABLE:
        rows, layout = quantize_blocks(x, w.layout), w.layout
        matmul_portable(rows.q, rows.scale, rows.sums, w.packed, KIND_CODES[layout.kind],
                        layout.bits, layout.sub, layout.span, layout.offset,
                        header_bytes(layout), as_bias(bias), accumulate, out)
    elif takes_tiles(kernel, x.shape[0]):
        amx_linear(x, w, as_bias(bias), accumulate, out)
    else:  # quantizing and multiplying in one compiled call: a decode step makes one a matrix
        isa = AMX_FEW_ROWS if kernel == AMX else kernel
        LINEARS[isa][w.type_name](x, w.packed, as_bias(bias), accumulate, out)
    return out


def takes_tiles(kernel: str, rows: int) -> bool:
    """Whether `kernel` multiplies `rows` rows on AMX's bfloat16 tiles (else on int8 codes)."""
    return kernel == AMX and rows >= AMX_MIN_ROWS


# --------------------------------------------------------------------------- by instruction set


def panel_tile(isa, type_name):
    return tile(isa, type_name)


@overload(panel_tile)
def _panel_tile(isa, type_name):
    if not (isinstance(isa, types.Literal) and isinstance(type_name, types.Literal)):
        return None
    shape = tile(isa.literal_value, type_name.literal_value)
    return lambda isa, type_name: shape


@njit(cache=True, nogil=True, parallel=True)
def matmul_isa(isa, type_name, xq, xs, xsums, packed, bias, accumulate, out):
    """out[:, :] through `block_panel` (compiled once per ISA and type: both are constants),
    the panels in chunks the threads claim as they go (`kernels.claim`)."""
    literally(isa)
    literally(type_name)
    _, _, blocks, _ = panel_tile(isa, type_name)
    if xq.shape[0] == 1:
        step, chunks = split_chunks(packed.shape[0], 1, stream_chunks(packed.nbytes))
    else:
        step, chunks = split_chunks(packed.shape[0], blocks)
    taken = chunk_counter()
    for _ in prange(chunks):
        chunk = claim(taken)
        while chunk < chunks:
            after = claim(taken)  # (now: this chunk's tiles of rows fetch its first panels)
            panel_columns(isa, type_name, xq, xs, xsums, packed, bias, accumulate, out,
                          chunk * step, min(packed.shape[0], (chunk + 1) * step),
                          after * step if after < chunks else packed.shape[0])
            chunk = after


@njit(cache=True, nogil=True)
def panel_columns(isa, type_name, xq, xs, xsums, packed, bias, accumulate, out, start, end,
                  after):
    """Panels start:end: one row, one panel at a time, reading ahead (`block_dot.ONE_ROW_LEAD`);
    more, groups of the tile's blocks against every row, then one at a time. `after` is the
    first panel the thread takes next (packed.shape[0]: none)."""
    _, rows, blocks, one_row_vector = panel_tile(isa, type_name)
    acc = np.empty(rows * blocks * PANEL, np.float32)
    if xq.shape[0] == 1:
        for b in range(start, end):
            panel(isa, type_name, one_row_vector, 1, 1, ONE_ROW_LEAD, xq, xs, xsums, packed,
                  bias, accumulate, out, 0, b, acc, 0, 0)
        return
    b = start
    while b + blocks <= end:
        panel_rows(isa, type_name, blocks, xq, xs, xsums, packed, bias, accumulate, out, b, acc,
                   b + blocks if b + blocks < end else after)
        b += blocks
    for left in range(b, end):
        panel_rows(isa, type_name, 1, xq, xs, xsums, packed, bias, accumulate, out, left, acc,
                   left + 1 if left + 1 < end else after)


@njit(cache=True, nogil=True, inline="always")
def panel_rows(isa, type_name, n_blocks, xq, xs, xsums, packed, bias, accumulate, out, b, acc,
               nxt):
    """Every row against panels b:b + n_blocks, a tile of rows at a time, then one at a time.
    The first tile reads the panels from memory, the others from cache; meanwhile those ask
    for the panels from `nxt` on (the next this thread takes), a share each, and every tile for
    its rows' output lines there: a core does not read ahead while it computes, and a large
    output's rows (a batch's LM head) are more streams than its prefetcher follows."""
    vector, rows, _, _ = panel_tile(isa, type_name)
    m, supers = xq.shape[0], packed.shape[1]
    coming = max(0, min(n_blocks, packed.shape[0] - nxt))  # panels from nxt on
    shares = m // rows - 1
    per_share = coming * supers * packed.shape[2] // max(1, shares)
    lines = -(-per_share // (CACHE_LINE * supers))  # a share's lines per super-block
    outputs = max(0, min(coming * PANEL, out.shape[1] - nxt * PANEL))
    t = 0
    while t + rows <= m:
        if outputs:
            for i in range(rows):
                prefetch_lines(out.ctypes.data + 4 * ((t + i) * out.shape[1] + nxt * PANEL),
                               4 * outputs)
        share = t // rows - 1  # (the first tile's, -1: none)
        at = packed[nxt:].ctypes.data + share * lines * supers * CACHE_LINE if coming else 0
        panel(isa, type_name, vector, rows, n_blocks, 0, xq, xs, xsums, packed, bias,
              accumulate, out, t, b, acc, at, lines if share >= 0 else 0)
        t += rows
    for i in range(t, m):
        panel(isa, type_name, vector, 1, n_blocks, 0, xq, xs, xsums, packed, bias, accumulate,
              out, i, b, acc, 0, 0)


@njit(cache=True, nogil=True, inline="always")
def panel(isa, type_name, vector, n_rows, n_blocks, lead, xq, xs, xsums, packed, bias,
          accumulate, out, t, b, acc, ahead, lines):
    """out[t:t + n_rows, the outputs of panels b:b + n_blocks], through acc, in vectors of
    `vector` bytes; meanwhile `block_panel` asks for the line `lead` bytes past each it reads
    (0: none) and for `lines` lines a super-block from `ahead` on."""
    supers, per_panel = packed.shape[1], packed.shape[1] * packed.shape[2]
    width = n_blocks * PANEL
    block_panel(isa, type_name, vector, n_rows, n_blocks, lead,
                xq.ctypes.data + t * xq.shape[1],
                xq.shape[1], xs.ctypes.data + 4 * t * xs.shape[1], 4 * xs.shape[1],
                xsums.ctypes.data + 4 * t * xsums.shape[1], 4 * xsums.shape[1],
                packed.ctypes.data + b * per_panel, per_panel, supers, acc.ctypes.data,
                4 * width, ahead, lines)
    store_sums(acc, width, out, n_rows, t, b * PANEL, bias, accumulate)


def entry_point(isa: str, type_name: str):
    """A compiled function quantizing x and running `matmul_isa` for one ISA and type, both
    constants (so that each is compiled once, and called without numba re-typing strings on
    every call)."""
    layout = LAYOUTS[type_name]
    span, sub = layout.span, layout.sub

    @njit(cache=True, nogil=True)
    def linear(x, packed, bias, accumulate, out):
        xq, xs, xsums = quantize(x, span, sub)
        matmul_isa(isa, type_name, xq, xs, xsums, packed, bias, accumulate, out)
    return linear


LINEARS = {isa: {t: entry_point(isa, t) for t in LAYOUTS} for isa in ISAS}


def kernel_functions(kernel: str) -> list:
    """The compiled functions (one a type) that `kernel` multiplies with: for "amx", its
    tiles' and those of the kernel it runs on fewer rows."""
    if kernel == AMX:
        return [*AMX_LINEARS.values(), *LINEARS[AMX_FEW_ROWS].values()]
    return list(LINEARS[kernel].values())


# --------------------------------------------------------------------------- portable

KIND_CODES = {"sym": 0, "asym": 1, "kmin": 2, "ksym": 3}  # `Layout.kind` as compiled code takes it


@njit(cache=True, nogil=True, parallel=True)
def matmul_portable(xq, xs, xsums, packed, kind, bits, sub, span, offset, header, bias,
                    accumulate, out):
    """`block_linear`'s product in plain loops on the packed panels: each panel's
    super-block's codes unpacked once, then every row's integer sums per sub-block and output,
    finished as `block_dot` does."""
    n_panels, supers = packed.shape[0], packed.shape[1]
    subs = span // sub
    halves = 1 if kind == 0 or kind == 3 else 2
    for p in prange(n_panels):
        u = np.empty((PANEL, span), np.int32)
        acc = np.zeros((xq.shape[0], PANEL), np.float32)
        for s in range(supers):
            block = packed[p, s]
            unpack_codes(block[header:], bits, sub, span, u)
            halves_bits = block[:2 * PANEL * halves].copy().view(np.uint16)
            small = block[2 * PANEL * halves:header]
            for t in range(xq.shape[0]):
                dx = xs[t, s]
                for j in range(PANEL):
                    acc[t, j] += dx * super_block_dot(xq[t, s * span:(s + 1) * span],
                                                      xsums[t, s * subs:(s + 1) * subs], u[j],
                                                      kind, sub, offset,
                                                      float16_bits_to_float32(halves_bits[j]),
                                                      second_half(halves_bits, j, halves),
                                                      small, j, subs)
        for t in range(xq.shape[0]):
            for j in range(min(PANEL, out.shape[1] - p * PANEL)):
                finish(out, t, p * PANEL + j, acc[t, j], bias, accumulate)


@njit(cache=True, nogil=True, inline="always")
def second_half(bits, j, halves):
    """Output j's second float16 field (m or dmin), 0.0 where the layout has none."""
    return float16_bits_to_float32(bits[PANEL + j]) if halves == 2 else np.float32(0.0)


@njit(cache=True, nogil=True)
def unpack_codes(code_bytes, bits, sub, span, u):
    """u[j, k] = output j's code for input k of one panel's super-block."""
    for j in range(PANEL):
        lane_codes(code_bytes, bits, sub, span, j, u[j])


def take_lanes(w: BlockWeight, ids: np.ndarray) -> np.ndarray:
    """w.take(ids) (the token embedding's lookup) reading only each row's lane of its panel
    (`take_rows`): equal values."""
    ids = np.asarray(ids, np.int64).reshape(-1)
    out = np.empty((ids.shape[0], w.shape[1]), np.float32)
    layout = w.layout
    take_rows(w.packed, w.shape[0], KIND_CODES[layout.kind], layout.bits, layout.sub,
              layout.span, layout.offset, header_bytes(layout), ids, out)
    return out


@njit(cache=True, nogil=True)
def take_rows(packed, rows, kind, bits, sub, span, offset, header, ids, out):
    """out[i] = the float32 row ids[i] of the `rows` x k matrix `packed` holds, from its lane
    of its panel: `block_quant.unpack_panels`' arithmetic in its order (so the values are
    equal) on one output's bytes. A lookup of a few rows reads a few KB: numpy's gathers and
    broadcasts cost more than that."""
    subs, halves = span // sub, 1 if kind == 0 or kind == 3 else 2
    u = np.empty(span, np.int32)
    for i in range(ids.shape[0]):
        if not 0 <= ids[i] < rows:
            raise IndexError("a row id outside the table")
        p, j = ids[i] // PANEL, ids[i] % PANEL
        for s in range(packed.shape[1]):
            block = packed[p, s]
            lane_codes(block[header:], bits, sub, span, j, u)
            d = float16_at(block, j)
            m = float16_at(block, PANEL + j) if halves == 2 else np.float32(0.0)
            small = block[2 * PANEL * halves:header]
            for k in range(span):
                n = k // sub
                if kind == 0:
                    w = d * np.float32(u[k] - offset)
                elif kind == 1:
                    w = d * np.float32(u[k]) + m
                elif kind == 2:
                    w = ((d * np.float32(small[n * PANEL + j])) * np.float32(u[k])
                         - m * np.float32(small[(subs + n) * PANEL + j]))
                else:
                    sc = np.int32(small[n * PANEL + j])
                    sc = sc - 256 if sc > 127 else sc
                    w = (d * np.float32(sc)) * np.float32(u[k] - offset)
                out[i, s * span + k] = w


@njit(cache=True, nogil=True, inline="always")
def float16_at(block, n):
    """Float16 number n of a panel's super-block header (little-endian), as float32."""
    return float16_bits_to_float32(np.uint16(block[2 * n]) | (np.uint16(block[2 * n + 1]) << 8))


@njit(cache=True, nogil=True)
def lane_codes(code_bytes, bits, sub, span, j, u):
    """u[k] = output j's code for input k of one panel's super-block
    (`block_quant.interleave_codes` undone for one lane)."""
    per_sub = sub // GROUP  # groups of a sub-block
    for n in range(span // GROUP):
        at, shift, top_at, top_shift = n * LINE, 0, 0, 0
        if bits != 8:  # two groups a line: sub-block's first half low, second half high
            sub_block, inner = divmod(n, per_sub)
            high, position = divmod(inner, per_sub // 2)
            base = sub_block * per_sub * LINE * bits // 8
            at, shift = base + position * LINE, 4 * high
            # (6 bits: then a line of every group's top 2 bits)
            top_at, top_shift = base + per_sub // 2 * LINE, 2 * inner
        for i in range(GROUP):
            v = np.int32(code_bytes[at + j * GROUP + i])
            if bits != 8:
                v = (v >> shift) & 0x0F
            if bits == 6:
                v |= ((np.int32(code_bytes[top_at + j * GROUP + i]) >> top_shift) & 3) << 4
            u[n * GROUP + i] = v


@njit(cache=True, nogil=True)
def super_block_dot(x, x_sums, u, kind, sub, offset, d, second, small, j, subs):
    """One output's dot product with one super-block of x, before x's scale."""
    scaled = np.int32(0)
    mins = np.int32(0)
    for n in range(subs):
        total = np.int32(0)
        for k in range(n * sub, (n + 1) * sub):
            total += u[k] * np.int32(x[k])
        if kind == 0:
            return d * np.float32(total - offset * x_sums[0])
        if kind == 1:
            return d * np.float32(total) + second * np.float32(x_sums[0])
        if kind == 2:
            scaled += total * np.int32(small[n * PANEL + j])
            mins += np.int32(small[(subs + n) * PANEL + j]) * x_sums[n]
        else:
            sc = np.int32(small[n * PANEL + j])
            sc = sc - 256 if sc > 127 else sc
            scaled += (total - offset * x_sums[n]) * sc
    return d * np.float32(scaled) - second * np.float32(mins)


# --------------------------------------------------------------------------- choosing


def compile_block_kernel(kernel: str, type_names=("Q8_0",)) -> None:
    """Compiles (or loads from numba's cache) `kernel` with the activations' quantizers for the
    given types (each type is its own compiled function: the others compile on first use), and
    the embedding's lookup (one function for every type). "amx" first asks Linux for the tiles
    (`block_amx.request_tiles`: a refusal raises here, before any tile instruction runs)."""
    if kernel == AMX and not config.DISABLE_JIT:
        request_tiles()
    for type_name in type_names:
        kind = BLOCK_TYPES[type_name]
        w = from_gguf(type_name, np.zeros((1, kind.bytes), np.uint8), (1, kind.weights))
        for rows in (1, AMX_MIN_ROWS) if kernel == AMX else (1,):
            x = np.zeros((rows, kind.weights), np.float32)
            block_linear(x, w, kernel,
                         residual=block_linear(x, w, kernel, np.zeros(1, np.float32)))
        take_lanes(w, np.zeros(1, np.int64))


def first_compiling_kernel(kernels: list[str]) -> str:
    """The first of `kernels` (best first) that compiles here, compiled (`first_that_compiles`)."""
    return first_that_compiles(kernels, compile_block_kernel, "block-quantized dot products")
