"""W8A8: a linear layer on int8 weights *and* int8 activations, `int8_linear(x, w)`.

The weights are `Int8Weight`s (`model/quant.py`: int8 per output channel c, w[c] ~ q[c] * s[c]).
At run time each row of x (a token) is quantized the same way, x[t] ~ p[t] * r[t]
(`quantize_rows`). Then

    x[t] . w[c] ~ r[t] * s[c] * (p[t] . q[c])

where the dot product of integers is exact in int32 (|p . q| <= K * 127 * 127 < 2**31 for any
K below 133,000) and is scaled once per output. An int8 multiply-add costs a quarter of a
float32 one in vector width, and the weights stay a quarter of float32's bytes.

Kernels, one per instruction set (`model/int8_dot.py` has the LLVM side), chosen by the CPU
(`cpu.KernelPath.int8`): "avx512vnni", "avxvnni", "avx512bw", "avx2", and "portable", plain
numba loops on int32 that run wherever numba runs (and, as plain Python, under
NUMBA_DISABLE_JIT=1). All compute the same integers, so they agree exactly; the plain version
is `reference.linear` on `dequantize`d weights and activations (tests/model/test_int8_gemm.py).
"""

from __future__ import annotations

import numpy as np
from numba import config, literally, njit, prange, types
from numba.extending import overload

from nanovllm.model.int8_dot import ISAS, OFFSET, TILES, dot_tile
from nanovllm.model.quant import INT8_MAX, Int8Weight

# Output columns are split into this many chunks, shared out among the threads.
NUM_CHUNKS = 64
PORTABLE = "portable"
KERNELS = (*ISAS, PORTABLE)


def int8_linear(x: np.ndarray, w: Int8Weight, kernel: str) -> np.ndarray:
    """x [M, K] float32 quantized per row, times w [N, K] -> [M, N] float32, on `kernel`."""
    xq = np.empty(x.shape, np.int8)
    xs = np.empty(x.shape[0], np.float32)
    quantize_rows(np.ascontiguousarray(x), xq, xs)
    out = np.empty((x.shape[0], w.shape[0]), np.float32)
    int8_matmul(xq, xs, w, out, kernel)
    return out


def int8_matmul(xq: np.ndarray, xs: np.ndarray, w: Int8Weight, out: np.ndarray,
                kernel: str) -> None:
    """out = (xq * xs[:, None]) @ dequantize(w).T, on int32 sums. All arrays C-contiguous."""
    if config.DISABLE_JIT:
        kernel = PORTABLE
    MATMULS[kernel](xq, xs, w.q, w.scale, w.sums, out)


# --------------------------------------------------------------------------- activations


@njit(cache=True, nogil=True, parallel=True)
def quantize_rows(x, q, scale):
    """q[t], scale[t] = `quant.quantize_int8` of row t of x, exactly (the same float32 steps):
    scale = max|x[t]| / 127, q = round(x[t] / scale), ties to even."""
    for t in prange(x.shape[0]):
        peak = np.float32(0.0)
        for k in range(x.shape[1]):
            peak = max(peak, abs(x[t, k]))
        s = np.float32(peak / np.float32(INT8_MAX))
        inverse = np.float32(np.float32(1.0) / s) if s > 0 else np.float32(0.0)
        for k in range(x.shape[1]):
            v = np.rint(np.float32(x[t, k] * inverse))
            q[t, k] = np.int8(min(max(v, -INT8_MAX), INT8_MAX))
        scale[t] = s


# --------------------------------------------------------------------------- portable


@njit(cache=True, nogil=True, parallel=True)
def matmul_portable(xq, xs, wq, ws, wsums, out):
    """`int8_matmul` in plain loops: four weight rows per row of x, each x element read once
    for the four (LLVM vectorizes the sums as it can, e.g. into pmaddwd)."""
    n = wq.shape[0]
    step = ((n + NUM_CHUNKS - 1) // NUM_CHUNKS + 3) // 4 * 4
    for chunk in prange(NUM_CHUNKS):
        start, end = min(n, chunk * step), min(n, (chunk + 1) * step)
        for t in range(xq.shape[0]):
            c = start
            while c + 4 <= end:
                s0 = s1 = s2 = s3 = np.int32(0)
                for k in range(xq.shape[1]):
                    v = np.int32(xq[t, k])
                    s0 += v * np.int32(wq[c, k])
                    s1 += v * np.int32(wq[c + 1, k])
                    s2 += v * np.int32(wq[c + 2, k])
                    s3 += v * np.int32(wq[c + 3, k])
                out[t, c] = np.float32(s0) * xs[t] * ws[c]
                out[t, c + 1] = np.float32(s1) * xs[t] * ws[c + 1]
                out[t, c + 2] = np.float32(s2) * xs[t] * ws[c + 2]
                out[t, c + 3] = np.float32(s3) * xs[t] * ws[c + 3]
                c += 4
            for j in range(c, end):
                s = np.int32(0)
                for k in range(xq.shape[1]):
                    s += np.int32(xq[t, k]) * np.int32(wq[j, k])
                out[t, j] = np.float32(s) * xs[t] * ws[j]


# --------------------------------------------------------------------------- by instruction set


def tile_shape(isa):
    """(vector bytes, tile rows, tile columns, x offset) of an ISA (`int8_dot.TILES`)."""
    return (*TILES[isa], OFFSET[isa])


@overload(tile_shape)
def _tile_shape(isa):
    if not isinstance(isa, types.Literal):
        return None
    shape = tile_shape(isa.literal_value)
    return lambda isa: shape


@njit(cache=True, nogil=True, parallel=True)
def matmul_isa(isa, xq, xs, wq, ws, wsums, out):
    """`int8_matmul` through `dot_tile` (compiled once per ISA: `isa` is a constant), columns in
    chunks shared among the threads (a chunk's weights stay in cache while every row of x
    passes over them)."""
    literally(isa)
    n = wq.shape[0]
    cols = tile_shape(isa)[2]
    step = ((n + NUM_CHUNKS - 1) // NUM_CHUNKS + cols - 1) // cols * cols
    for chunk in prange(NUM_CHUNKS):
        tile_columns(isa, xq, xs, wq, ws, wsums, out, min(n, chunk * step),
                     min(n, (chunk + 1) * step))


@njit(cache=True, nogil=True, inline="always")
def tile_columns(isa, xq, xs, wq, ws, wsums, out, start, end):
    """out[:, start:end], by tiles of (rows x cols), then (1 x cols), then (1 x 1): a tile of
    rows passes over every column, so that each row of out is written left to right."""
    _, rows, _, _ = tile_shape(isa)
    m = xq.shape[0]
    t = 0
    while t + rows <= m:
        tile_row(isa, xq, xs, wq, ws, wsums, out, t, rows, start, end)
        t += rows
    for i in range(t, m):
        tile_row(isa, xq, xs, wq, ws, wsums, out, i, 1, start, end)


@njit(cache=True, nogil=True, inline="always")
def tile_row(isa, xq, xs, wq, ws, wsums, out, t, rows, start, end):
    """out[t:t + rows, start:end] (rows: the tile's or 1)."""
    width, _, cols, offset = tile_shape(isa)
    k_dim = xq.shape[1]
    k_end = k_dim - k_dim % width
    x0, w0 = xq.ctypes.data + t * k_dim, wq.ctypes.data
    c = start
    while c + cols <= end:
        sums = dot_tile(isa, rows, cols, x0, k_dim, w0 + c * k_dim, k_dim, k_end)
        for i in range(rows):
            for j in range(cols):
                store(xq, xs, wq, ws, wsums, out, t + i, c + j, sums[i * cols + j], k_end, offset)
        c += cols
    for j in range(c, end):
        for i in range(rows):
            sums = dot_tile(isa, 1, 1, x0 + i * k_dim, k_dim, w0 + j * k_dim, k_dim, k_end)
            store(xq, xs, wq, ws, wsums, out, t + i, j, sums[0], k_end, offset)


@njit(cache=True, nogil=True, inline="always")
def store(xq, xs, wq, ws, wsums, out, t, c, vector_sum, k_end, offset):
    """out[t, c] from the vector part of the sum: adds the rest of the row (k >= k_end) with
    the same offset, takes the offset's share out (offset * sum(w[c])), and scales."""
    s = np.int32(vector_sum)
    for k in range(k_end, xq.shape[1]):
        s += (np.int32(xq[t, k]) + np.int32(offset)) * np.int32(wq[c, k])
    s -= np.int32(offset) * wsums[c]
    out[t, c] = np.float32(s) * xs[t] * ws[c]


# One entry point per ISA, so that each is compiled for its ISA as a constant (and called from
# Python without numba re-typing a string argument on every call).
@njit(cache=True, nogil=True)
def matmul_avx512vnni(xq, xs, wq, ws, wsums, out):
    matmul_isa("avx512vnni", xq, xs, wq, ws, wsums, out)


@njit(cache=True, nogil=True)
def matmul_avxvnni(xq, xs, wq, ws, wsums, out):
    matmul_isa("avxvnni", xq, xs, wq, ws, wsums, out)


@njit(cache=True, nogil=True)
def matmul_avx512bw(xq, xs, wq, ws, wsums, out):
    matmul_isa("avx512bw", xq, xs, wq, ws, wsums, out)


@njit(cache=True, nogil=True)
def matmul_avx2(xq, xs, wq, ws, wsums, out):
    matmul_isa("avx2", xq, xs, wq, ws, wsums, out)


MATMULS = {"avx512vnni": matmul_avx512vnni, "avxvnni": matmul_avxvnni,
           "avx512bw": matmul_avx512bw, "avx2": matmul_avx2, PORTABLE: matmul_portable}


def compile_int8_kernel(kernel: str) -> None:
    """Compiles (or loads from numba's cache) the activations' quantizer and `kernel`."""
    x = np.zeros((1, 1), np.float32)
    w = Int8Weight(np.zeros((1, 1), np.int8), np.zeros(1, np.float32))
    int8_linear(x, w, kernel)
