"""W8A8: a linear layer on int8 weights *and* int8 activations, `int8_linear(x, w)`.

The weights are `Int8Weight`s (`model/weights/quant.py`: int8 per output channel c, w[c] ~
q[c] * s[c]). At run time each row of x (a token) is quantized the same way, x[t] ~ p[t] * r[t]
(`quantize_rows`). Then

    x[t] . w[c] ~ r[t] * s[c] * (p[t] . q[c])

where the dot product of integers is exact in int32 (|p . q| <= K * 127 * 127 < 2**31 for any
K below 133,000) and is scaled once per output. A vector holds four times as many int8 lanes
as float32 ones, but without VNNI one product of them takes four instructions (`int8_dot`), so
the gain in multiply-adds a cycle is well short of 4x (docs/performance.md#limits); the
weights stay a quarter of float32's bytes, which is what batch-1 decoding reads.

Kernels, one per instruction set (`model/kernels/int8_dot.py` has the LLVM side), chosen by the CPU
(`cpu.KernelPath.int8`): "avx512vnni", "avxvnni", "avx512bw", "avx2", and "portable", plain
numba loops on int32 that run wherever numba runs (and, as plain Python, under
NUMBA_DISABLE_JIT=1). All compute the same integers, so they agree exactly; the plain version
is `gpt2_reference.linear` on `dequantize`d weights and activations (tests/model/test_int8_gemm.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import config, literally, njit, prange, types
from numba.extending import overload

from nanovllm.model.kernels.int8_dot import ISAS, OFFSET, TILES, dot_panel
from nanovllm.model.kernels.parallel import chunk_counter, claim, on_threads, split_chunks
from nanovllm.model.kernels.shared import as_bias, finish, first_that_compiles
from nanovllm.model.weights.quant import BLOCK, BLOCK_BYTES, GROUP, INT8_MAX, Int8Weight

PORTABLE = "portable"
KERNELS = (*ISAS, PORTABLE)


@dataclass(slots=True)
class Int8Rows:
    """Activations already quantized per row (`quantize_rows`), for `int8_linear` to take as
    they are: row t stands for q[t] * scale[t]. A kernel that makes the float32 rows (a layer
    norm, GELU) can quantize each while it is in cache, instead of writing it out for
    `int8_linear` to read back."""
    q: np.ndarray      # int8 [M, K'], K' = K rounded up to GROUP, zeros past K
    scale: np.ndarray  # float32 [M]
    width: int         # K

    @classmethod
    def empty(cls, rows: int, width: int) -> Int8Rows:
        padded = -(-width // GROUP) * GROUP
        q = (np.empty if padded == width else np.zeros)((rows, padded), np.int8)
        return cls(q, np.empty(rows, np.float32), width)

    @property
    def shape(self) -> tuple[int, int]:
        return self.q.shape[0], self.width


def quantize_activations(x: np.ndarray) -> Int8Rows:
    """x [M, K] float32 quantized per row (`quantize_rows`; on all threads when there are enough
    of them, `parallel.on_threads`)."""
    rows = Int8Rows.empty(*x.shape)
    x = np.ascontiguousarray(x)
    if on_threads(x.size):
        quantize_rows_parallel(x, rows.q, rows.scale)
    else:
        quantize_rows(x, rows.q, rows.scale)
    return rows


def int8_linear(x: np.ndarray | Int8Rows, w: Int8Weight, kernel: str,
                bias: np.ndarray | None = None, residual: np.ndarray | None = None) -> np.ndarray:
    """x [M, K] float32 quantized per row (or already quantized, `Int8Rows`), times w [N, K],
    plus bias [N] -> [M, N] float32, on `kernel`. With `residual` ([M, N] float32,
    C-contiguous) the result is added into it in place, and it is returned: `residual += x @
    w.T + bias` in one pass."""
    if not isinstance(x, Int8Rows):
        x = quantize_activations(x)
    if residual is None:
        out = np.empty((x.q.shape[0], w.shape[0]), np.float32)
        int8_matmul(x.q, x.scale, w, out, kernel, bias)
        return out
    int8_matmul(x.q, x.scale, w, residual, kernel, bias, accumulate=True)
    return residual


def int8_matmul(xq: np.ndarray, xs: np.ndarray, w: Int8Weight, out: np.ndarray,
                kernel: str, bias: np.ndarray | None = None, accumulate: bool = False) -> None:
    """out = (xq * xs[:, None]) @ dequantize(w).T + bias, on int32 sums; with `accumulate`,
    out += that. All arrays C-contiguous (the compiled kernels read them through raw pointers;
    `Int8Weight` keeps its own so); xq [M, K], or [M, K'] with zeros up to w.packed's padded
    K'."""
    if config.DISABLE_JIT:
        kernel = PORTABLE
    padded = w.packed.shape[1] * GROUP
    if xq.shape[1] != padded:
        xq = np.pad(xq, ((0, 0), (0, padded - xq.shape[1])))
    MATMULS[kernel](xq, xs, w.packed, w.scale, w.sums, as_bias(bias), accumulate, out)


# --------------------------------------------------------------------------- activations


@njit(cache=True, nogil=True)
def quantize_rows(x, q, scale):
    """q[t], scale[t] = `quant.quantize_int8` of row t of x, exactly (the same float32 steps):
    scale = max|x[t]| / 127, q = round(x[t] / scale), ties to even. q may be wider than x (its
    padding is left as it is)."""
    for t in range(x.shape[0]):
        quantize_row(x, q, scale, t)


@njit(cache=True, nogil=True, parallel=True)
def quantize_rows_parallel(x, q, scale):
    """`quantize_rows` on all threads."""
    for t in prange(x.shape[0]):
        quantize_row(x, q, scale, t)


@njit(cache=True, nogil=True, inline="always")
def quantize_row(x, q, scale, t):
    scale[t] = quantize_vector(x[t], q[t])


@njit(cache=True, nogil=True, inline="always")
def quantize_vector(row, out):
    """out[:len(row)] = row quantized (`quantize_rows`' steps); returns its scale."""
    s = np.float32(row_peak(row) / np.float32(INT8_MAX))
    inverse = np.float32(np.float32(1.0) / s) if s > 0 else np.float32(0.0)
    top = np.float32(INT8_MAX)
    for k in range(row.shape[0]):  # float32 throughout, 1-d: LLVM vectorizes it
        v = np.rint(np.float32(row[k] * inverse))
        out[k] = np.int8(min(max(v, -top), top))
    return s


@njit(cache=True, nogil=True, inline="always")
def row_peak(row):
    """max |row| (float32, contiguous): `span_peak` of all of it."""
    return span_peak(row.view(np.int32), 0, row.shape[0])


@njit(cache=True, nogil=True, inline="always")
def span_peak(bits, start, stop):
    """max |x[start:stop]| for x a float32 row given as its int32 bits, taken on the bits:
    without the sign bit, a finite float32's bits order as integers as the float does, and an
    integer maximum is a vector one (LLVM takes a float maximum one element at a time). A NaN
    wins, and makes the row's scale NaN."""
    peak = np.int32(0)
    for k in range(start, stop):
        peak = max(peak, np.int32(bits[k] & np.int32(0x7FFFFFFF)))
    return np.int32(peak).view(np.float32)


# --------------------------------------------------------------------------- portable


@njit(cache=True, nogil=True, parallel=True)
def matmul_portable(xq, xs, packed, ws, wsums, bias, accumulate, out):
    """`int8_matmul` in plain loops on the packed weights: each x element read once for the 16
    columns of a block (LLVM vectorizes the loop over them as it can, e.g. into pmaddwd)."""
    n_blocks, groups = packed.shape[0], packed.shape[1]
    step, chunks = split_chunks(n_blocks, 1)
    for chunk in prange(chunks):
        for b in range(chunk * step, min(n_blocks, (chunk + 1) * step)):
            for t in range(xq.shape[0]):
                acc = np.zeros(BLOCK, np.int32)
                for g in range(groups):
                    for i in range(GROUP):
                        v = np.int32(xq[t, g * GROUP + i])
                        for j in range(BLOCK):
                            acc[j] += v * np.int32(packed[b, g, j, i])
                for c in range(b * BLOCK, min(out.shape[1], (b + 1) * BLOCK)):
                    finish(out, t, c, np.float32(acc[c - b * BLOCK]) * xs[t] * ws[c], bias,
                           accumulate)


# --------------------------------------------------------------------------- by instruction set


def tile_shape(isa):
    """(vector bytes, panel rows, panel blocks, one-row panel blocks, x offset) of an ISA
    (`int8_dot.TILES`)."""
    return (*TILES[isa], OFFSET[isa])


@overload(tile_shape)
def _tile_shape(isa):
    if not isinstance(isa, types.Literal):
        return None
    shape = tile_shape(isa.literal_value)
    return lambda isa: shape


@njit(cache=True, nogil=True, parallel=True)
def matmul_isa(isa, xq, xs, packed, ws, wsums, bias, accumulate, out):
    """`int8_matmul` through `dot_panel` (compiled once per ISA: `isa` is a constant) on the
    packed weights, their blocks in chunks the threads claim as they go (`parallel.claim`).
    Within a chunk, each panel of blocks is read from memory once while every row of x passes
    over it (x, a few rows, or a prefill's, stays in cache)."""
    literally(isa)
    _, _, blocks, one_row_blocks, _ = tile_shape(isa)
    n_blocks = packed.shape[0]
    per_panel = one_row_blocks if xq.shape[0] == 1 else blocks
    step, chunks = split_chunks(n_blocks, per_panel)  # whole panels of blocks
    taken = chunk_counter()
    for _ in prange(chunks):  # each thread claims chunks while any are left (`claim`)
        chunk = claim(taken)
        while chunk < chunks:
            panel_columns(isa, xq, xs, packed, ws, wsums, bias, accumulate, out,
                          chunk * step, min(n_blocks, (chunk + 1) * step))
            chunk = claim(taken)


@njit(cache=True, nogil=True)
def panel_columns(isa, xq, xs, packed, ws, wsums, bias, accumulate, out, start, end):
    """Blocks start:end of the output columns (BLOCK columns each), by panels of blocks: a
    single row of x takes the one-row panel's width, more rows the panel's, then one block."""
    _, rows, blocks, one_row_blocks, _ = tile_shape(isa)
    acc = np.empty(rows * max(blocks, one_row_blocks) * BLOCK, np.int32)
    b = start
    if xq.shape[0] == 1:
        while b + one_row_blocks <= end:
            panel(isa, 1, one_row_blocks, xq, xs, packed, ws, wsums, bias, accumulate, out, 0,
                  b, acc)
            b += one_row_blocks
    else:
        while b + blocks <= end:
            panel_rows(isa, blocks, xq, xs, packed, ws, wsums, bias, accumulate, out, b, acc)
            b += blocks
    for left in range(b, end):
        panel_rows(isa, 1, xq, xs, packed, ws, wsums, bias, accumulate, out, left, acc)


# `panel_rows` and `panel` are inlined into `panel_columns`: as calls, each panel paid for
# passing and reference-counting a dozen arrays, a large share of a small panel's work.
@njit(cache=True, nogil=True, inline="always")
def panel_rows(isa, n_blocks, xq, xs, packed, ws, wsums, bias, accumulate, out, b, acc):
    """Every row of x against blocks b:b + n_blocks: panels of rows, then one row at a time."""
    _, rows, _, _, _ = tile_shape(isa)
    t = 0
    while t + rows <= xq.shape[0]:
        panel(isa, rows, n_blocks, xq, xs, packed, ws, wsums, bias, accumulate, out, t, b, acc)
        t += rows
    for i in range(t, xq.shape[0]):
        panel(isa, 1, n_blocks, xq, xs, packed, ws, wsums, bias, accumulate, out, i, b, acc)


@njit(cache=True, nogil=True, inline="always")
def panel(isa, n_rows, n_blocks, xq, xs, packed, ws, wsums, bias, accumulate, out, t, b, acc):
    """out[t:t + n_rows, BLOCK b:BLOCK (b + n_blocks)]: the integer sums (`dot_panel`), less
    the offset's share (offset * sum(w[c])), scaled per row and per column, plus the bias (or
    added into out: `finish`); the columns past out's edge (the packing's zeros) are dropped."""
    _, _, _, _, offset = tile_shape(isa)
    groups = packed.shape[1]
    n = out.shape[1]
    whole = (b + n_blocks) * BLOCK <= n  # no column past out's edge: scaled in `dot_panel`
    dot_panel(isa, n_rows, n_blocks, xq.ctypes.data + t * xq.shape[1], xq.shape[1],
              packed.ctypes.data + b * groups * BLOCK_BYTES, groups * BLOCK_BYTES, groups,
              acc.ctypes.data, whole, wsums.ctypes.data + 4 * b * BLOCK,
              ws.ctypes.data + 4 * b * BLOCK, xs.ctypes.data + 4 * t,
              out.ctypes.data + 4 * (t * n + b * BLOCK), 4 * n,
              bias.ctypes.data + 4 * b * BLOCK, bias.shape[0] > 0, accumulate)
    if whole:
        return
    for i in range(n_rows):
        for j in range(n_blocks):
            c0 = (b + j) * BLOCK
            sums = acc[(i * n_blocks + j) * BLOCK:]
            for c in range(c0, min(n, c0 + BLOCK)):
                s = sums[c - c0] - np.int32(offset) * wsums[c]
                finish(out, t + i, c, np.float32(s) * xs[t + i] * ws[c], bias, accumulate)


# One entry point per ISA, so that each is compiled for its ISA as a constant (and called from
# Python without numba re-typing a string argument on every call).
@njit(cache=True, nogil=True)
def matmul_avx512vnni(xq, xs, wq, ws, wsums, bias, accumulate, out):
    matmul_isa("avx512vnni", xq, xs, wq, ws, wsums, bias, accumulate, out)


@njit(cache=True, nogil=True)
def matmul_avxvnni(xq, xs, wq, ws, wsums, bias, accumulate, out):
    matmul_isa("avxvnni", xq, xs, wq, ws, wsums, bias, accumulate, out)


@njit(cache=True, nogil=True)
def matmul_avx512bw(xq, xs, wq, ws, wsums, bias, accumulate, out):
    matmul_isa("avx512bw", xq, xs, wq, ws, wsums, bias, accumulate, out)


@njit(cache=True, nogil=True)
def matmul_avx2(xq, xs, wq, ws, wsums, bias, accumulate, out):
    matmul_isa("avx2", xq, xs, wq, ws, wsums, bias, accumulate, out)


MATMULS = {"avx512vnni": matmul_avx512vnni, "avxvnni": matmul_avxvnni,
           "avx512bw": matmul_avx512bw, "avx2": matmul_avx2, PORTABLE: matmul_portable}


def compile_int8_kernel(kernel: str) -> None:
    """Compiles (or loads from numba's cache) the activations' quantizers (one row, and the
    threads' for a prefill's many) and `kernel`."""
    x = np.zeros((1, 1), np.float32)
    w = Int8Weight.from_rows(np.zeros((1, 1), np.int8), np.zeros(1, np.float32))
    int8_linear(x, w, kernel, residual=int8_linear(x, w, kernel, np.zeros(1, np.float32)))
    rows = Int8Rows.empty(1, 1)
    quantize_rows_parallel(x, rows.q, rows.scale)


def first_compiling_kernel(kernels: list[str]) -> str:
    """The first of `kernels` (best first) that compiles here, compiled (`first_that_compiles`)."""
    return first_that_compiles(kernels, compile_int8_kernel, "int8 dot products")
