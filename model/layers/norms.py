"""Normalization kernels: GPT-2's layer norm (alone, and after a post-norm encoder's residual
add: `add_layer_norm`), the Llama family's RMSNorm (alone, fused with the residual add, and per
head for Qwen3's queries and keys).

Each is a compiled loop over rows, on numba's threads when a step has enough of them
(`parallel.on_threads`), and stands for a plain function it is tested against:
`gpt2_reference.layer_norm` and `llama_reference.rms_norm`. A row is made in a few passes over x,
where numpy's versions make six. Told which weight their output feeds (`feeds=`), `layer_norm`
hands an int8 layer its input already quantized, row by row as it makes it
(`int8_gemm.Int8Rows`), where a separate pass would read the float32 rows back; a packed
bfloat16 layer its input already rounded the same way (`bf16_gemm.BF16Rows`).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from nanovllm.model.kernels.bf16_gemm import BF16Rows, round_vector
from nanovllm.model.kernels.int8_gemm import Int8Rows, quantize_vector
from nanovllm.model.kernels.parallel import on_threads
from nanovllm.model.kernels.shared import KERNEL_MATH, read_only
from nanovllm.model.layers.kernel_needs import KernelNeeds
from nanovllm.model.layers.linear import takes_bf16_rows, takes_int8
from nanovllm.model.weights.quant import Int8Weight, Weight


def layer_norm(x: np.ndarray, g: np.ndarray, b: np.ndarray, eps: float,
               feeds: Weight | None = None) -> np.ndarray | Int8Rows:
    """Each row of x ([n, E], C-contiguous) to zero mean and unit variance, then times g plus b;
    a new array (`gpt2_reference.layer_norm`).

    `feeds` is the weight of the linear layer the result goes into: where that layer takes int8
    activations, each row is quantized for it as soon as it is made (`Int8Rows`), and the
    float32 rows are never written out; where it takes bfloat16 rows, each is rounded for it
    (`BF16Rows`)."""
    g, b = read_only(g), read_only(b)  # (one compiled signature for any g and b)
    if feeds is not None and takes_int8(feeds):
        rows = Int8Rows.empty(*x.shape)
        layer_norm_int8_(x, g, b, eps, rows.q, rows.scale)
        return rows
    if feeds is not None and takes_bf16_rows(feeds, x.shape[0]):
        rounded = BF16Rows.empty(*x.shape, feeds.packed.shape[1])
        layer_norm_bf16_(x, g, b, eps, rounded.bits)
        return rounded
    out = np.empty_like(x)
    layer_norm_rows_(x, g, b, eps, out)
    return out


@njit(fastmath=KERNEL_MATH, cache=True, nogil=True, parallel=True)
def layer_norm_rows_(x, g, b, eps, out):
    if on_threads(x.size):
        for i in prange(x.shape[0]):
            layer_norm_row_(x[i], g, b, eps, out[i])
    else:
        for i in range(x.shape[0]):
            layer_norm_row_(x[i], g, b, eps, out[i])


@njit(fastmath=KERNEL_MATH, cache=True, nogil=True)
def layer_norm_row_(x, g, b, eps, out):
    n = x.shape[0]
    mean = np.float32(0.0)
    for j in range(n):
        mean += x[j]
    mean /= n
    var = np.float32(0.0)
    for j in range(n):
        var += (x[j] - mean) * (x[j] - mean)
    inv_std = np.float32(1.0 / np.sqrt(var / n + eps))
    for j in range(n):
        out[j] = (x[j] - mean) * inv_std * g[j] + b[j]


def add_layer_norm(x: np.ndarray, bias: np.ndarray, residual: np.ndarray, g: np.ndarray,
                   b: np.ndarray, eps: float) -> np.ndarray:
    """layer_norm(x + bias + residual) as a new array: a post-norm layer's residual add, with
    the linear layer's bias that made x (`bert_reference.layer`). One pass over the rows
    instead of numpy's two adds and then the norm's. x, residual: [n, E] C-contiguous."""
    out = np.empty_like(x)
    add_layer_norm_rows_(x, read_only(bias), residual, read_only(g), read_only(b), eps, out)
    return out


@njit(fastmath=KERNEL_MATH, cache=True, nogil=True, parallel=True)
def add_layer_norm_rows_(x, bias, residual, g, b, eps, out):
    if on_threads(x.size):
        for i in prange(x.shape[0]):
            add_layer_norm_row_(x[i], bias, residual[i], g, b, eps, out[i])
    else:
        for i in range(x.shape[0]):
            add_layer_norm_row_(x[i], bias, residual[i], g, b, eps, out[i])


@njit(fastmath=KERNEL_MATH, cache=True, nogil=True)
def add_layer_norm_row_(x, bias, residual, g, b, eps, out):
    """`layer_norm_row_` of the sum, made in out (its mean summed as it is written): written
    out here, as calling `layer_norm_row_` with out as its input too compiled to a loop LLVM
    did not vectorize."""
    n = x.shape[0]
    mean = np.float32(0.0)
    for j in range(n):
        v = x[j] + bias[j] + residual[j]
        out[j] = v
        mean += v
    mean /= n
    var = np.float32(0.0)
    for j in range(n):
        var += (out[j] - mean) * (out[j] - mean)
    inv_std = np.float32(1.0 / np.sqrt(var / n + eps))
    for j in range(n):
        out[j] = (out[j] - mean) * inv_std * g[j] + b[j]


# Without fast-math: `quantize_vector` is inlined here and must round as `quantize_rows` does;
# `layer_norm_row_` keeps its own flags.
@njit(cache=True, nogil=True, parallel=True)
def layer_norm_int8_(x, g, b, eps, q, scale):
    """q[i], scale[i] = `quantize_rows` of `layer_norm_rows_`'s row i, through one row of
    scratch (in cache) per thread."""
    if on_threads(x.size):
        for i in prange(x.shape[0]):
            row = np.empty(x.shape[1], np.float32)
            layer_norm_row_(x[i], g, b, eps, row)
            scale[i] = quantize_vector(row, q[i])
    else:
        row = np.empty(x.shape[1], np.float32)
        for i in range(x.shape[0]):
            layer_norm_row_(x[i], g, b, eps, row)
            scale[i] = quantize_vector(row, q[i])


@njit(cache=True, nogil=True, parallel=True)
def layer_norm_bf16_(x, g, b, eps, bits):
    """bits[i] = `round_rows` of `layer_norm_rows_`'s row i, through one row of scratch (in
    cache) per thread."""
    if on_threads(x.size):
        for i in prange(x.shape[0]):
            row = np.empty(x.shape[1], np.float32)
            layer_norm_row_(x[i], g, b, eps, row)
            round_vector(row, bits[i])
    else:
        row = np.empty(x.shape[1], np.float32)
        for i in range(x.shape[0]):
            layer_norm_row_(x[i], g, b, eps, row)
            round_vector(row, bits[i])


def compile_layer_norm(needs: KernelNeeds, add: bool = False) -> None:
    """float32, and as `needs` says, quantized or rounded to bfloat16; with `add`, the post-norm
    `add_layer_norm` too (g and b as `layer_norm` passes them: read-only)."""
    needs.log("layer norm")
    x = np.zeros((1, 1), np.float32)
    v = read_only(np.zeros(1, np.float32))
    int8 = Int8Weight.from_rows(np.zeros((1, 1), np.int8), np.zeros(1, np.float32))
    for feeds in (None, int8) if needs.int8 else (None,):
        layer_norm(x, v, v, 1e-5, feeds)
    if needs.bf16_packed:
        layer_norm_bf16_(x, v, v, 1e-5, np.empty((1, 2), np.uint16))
    if add:
        add_layer_norm(x, v, x, v, v, 1e-5)


@njit(fastmath=KERNEL_MATH, cache=True, nogil=True, parallel=True)
def rms_norm(x, g, eps):
    """Each row of x ([n, E], C-contiguous) divided by its root mean square, times g: a new
    array (`llama_reference.rms_norm`). Layer norm without the mean and the shift."""
    out = np.empty_like(x)
    if on_threads(x.size):
        for i in prange(x.shape[0]):
            rms_norm_row_(x[i], g, eps, out[i])
    else:
        for i in range(x.shape[0]):
            rms_norm_row_(x[i], g, eps, out[i])
    return out


@njit(fastmath=KERNEL_MATH, cache=True, nogil=True, parallel=True)
def add_rms_norm_(x, delta, g, eps):
    """x += delta IN PLACE (the residual stream, both [n, E] C-contiguous), and returns the new
    x's rms_norm: one pass over the rows instead of numpy's add and then the norm's (vLLM's
    fused_add_rms_norm)."""
    out = np.empty_like(x)
    if on_threads(x.size):
        for i in prange(x.shape[0]):
            add_row_(x[i], delta[i])
            rms_norm_row_(x[i], g, eps, out[i])
    else:
        for i in range(x.shape[0]):
            add_row_(x[i], delta[i])
            rms_norm_row_(x[i], g, eps, out[i])
    return out


@njit(fastmath=KERNEL_MATH, cache=True, nogil=True, parallel=True)
def rms_norm_qk_(qkv, q_heads, k_heads, q_gain, k_gain, eps):
    """Qwen3's q_norm and k_norm IN PLACE in the fused projection qkv ([n, W], C-contiguous:
    query heads, then key heads, then values, each head D = q_gain.size columns): each query
    head rms-normalized with q_gain, each key head with k_gain; the values untouched. Rows of the
    contiguous projection rather than strided views of its heads, so the loops vectorize."""
    if on_threads(qkv.size):
        for t in prange(qkv.shape[0]):
            rms_norm_qk_row_(qkv[t], q_heads, k_heads, q_gain, k_gain, eps)
    else:
        for t in range(qkv.shape[0]):
            rms_norm_qk_row_(qkv[t], q_heads, k_heads, q_gain, k_gain, eps)
    return qkv


@njit(fastmath=KERNEL_MATH, cache=True, nogil=True)
def rms_norm_qk_row_(row, q_heads, k_heads, q_gain, k_gain, eps):
    d = q_gain.shape[0]
    for h in range(q_heads + k_heads):
        head = row[h * d:(h + 1) * d]
        rms_norm_row_(head, q_gain if h < q_heads else k_gain, eps, head)


@njit(fastmath=KERNEL_MATH, cache=True, nogil=True)
def add_row_(x, delta):
    for j in range(x.shape[0]):
        x[j] += delta[j]


@njit(fastmath=KERNEL_MATH, cache=True, nogil=True)
def rms_norm_row_(x, g, eps, out):
    """out = g * x / rms(x); out may be x itself (every x[j] is read before out[j] is written)."""
    sq = np.float32(0.0)
    for j in range(x.shape[0]):
        sq += x[j] * x[j]
    inv_rms = np.float32(1.0 / np.sqrt(sq / x.shape[0] + eps))
    for j in range(x.shape[0]):
        out[j] = g[j] * (x[j] * inv_rms)


def compile_rms_norm() -> None:
    """For writable and for read-only (memory-mapped) gains; per head in a fused projection, as
    Qwen3's and Gemma 3's attention gives them."""
    x = np.zeros((1, 2), np.float32)
    read_only = np.zeros(2, np.float32)
    read_only.flags.writeable = False
    qkv = np.zeros((1, 6), np.float32)
    for g in (x[0], read_only):
        rms_norm(x, g, 1e-5)
        add_rms_norm_(x, x.copy(), g, 1e-5)
        rms_norm_qk_(qkv, 1, 1, g, g, 1e-5)
