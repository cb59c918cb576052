"""Activation kernels: GPT-2's GELU (tanh approximation), BERT's exact (erf) GELU and SwiGLU's
gate, silu(gate) * up.

Each is a compiled loop over rows, on numba's threads when a step has enough of them
(`parallel.on_threads`), tested against its plain function: `gpt2_reference.gelu`,
`bert_reference.gelu`, `llama_reference.silu`. They compute e**x with `shared.exp32`, which
vectorizes where libm's expf does not: one pass over the rows, where numpy's versions make up
to nine. Like `norms.layer_norm`, `gelu` quantizes its rows for an int8 layer it feeds
(`feeds=`), or rounds them for a packed bfloat16 one.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from nanovllm.model.kernels.bf16_gemm import BF16Rows, round_vector
from nanovllm.model.kernels.int8_gemm import Int8Rows, quantize_vector
from nanovllm.model.kernels.parallel import on_threads
from nanovllm.model.kernels.shared import KERNEL_MATH, exp32, exp32_within
from nanovllm.model.layers.kernel_needs import KernelNeeds
from nanovllm.model.layers.linear import takes_bf16_rows, takes_int8
from nanovllm.model.weights.quant import Int8Weight, Weight

GELU_C = np.float32(math.sqrt(2.0 / math.pi))


def gelu(x: np.ndarray, feeds: Weight | None = None) -> np.ndarray | Int8Rows:
    """GPT-2's tanh approximation (`gelu_new`, `gpt2_reference.gelu`) IN PLACE: overwrites
    x ([n, 4E], C-contiguous) and returns it. Computed as 0.5 x (1 + tanh(u)) = x / (1 + e**(-2u)).
    With `feeds` as in `norms.layer_norm`: also quantizes each row while it is in cache, and
    returns those (`Int8Rows`), or rounds them to bfloat16 (`BF16Rows`)."""
    if feeds is not None and takes_int8(feeds):
        rows = Int8Rows.empty(*x.shape)
        gelu_int8_(x, rows.q, rows.scale)
        return rows
    if feeds is not None and takes_bf16_rows(feeds, x.shape[0]):
        rounded = BF16Rows.empty(*x.shape, feeds.packed.shape[1])
        gelu_bf16_(x, rounded.bits)
        return rounded
    gelu_rows_(x)
    return x


@njit(fastmath=KERNEL_MATH, error_model="numpy", cache=True, nogil=True, parallel=True)
def gelu_rows_(x):
    if on_threads(x.size):
        for i in prange(x.shape[0]):
            gelu_row_(x[i])
    else:
        for i in range(x.shape[0]):
            gelu_row_(x[i])


# Without fast-math: `quantize_vector` is inlined here and must round as `quantize_rows` does;
# `gelu_row_` keeps its own flags.
@njit(cache=True, nogil=True, parallel=True)
def gelu_int8_(x, q, scale):
    """`gelu_rows_`, then each row quantized (`quantize_rows`) while it is in cache."""
    if on_threads(x.size):
        for i in prange(x.shape[0]):
            gelu_row_(x[i])
            scale[i] = quantize_vector(x[i], q[i])
    else:
        for i in range(x.shape[0]):
            gelu_row_(x[i])
            scale[i] = quantize_vector(x[i], q[i])


@njit(cache=True, nogil=True, parallel=True)
def gelu_bf16_(x, bits):
    """`gelu_rows_`, then each row rounded to bfloat16 (`round_rows`) while it is in cache."""
    if on_threads(x.size):
        for i in prange(x.shape[0]):
            gelu_row_(x[i])
            round_vector(x[i], bits[i])
    else:
        for i in range(x.shape[0]):
            gelu_row_(x[i])
            round_vector(x[i], bits[i])


# The exponent -2u bounded to where `exp32_within` is exact or infinite: below, 1 + e**(-2u)
# is 1 in float32, so x / (1 + e**(-2u)) is x; at the top it is inf, so the result is +-0.
GELU_EXP_MIN, GELU_EXP_MAX = np.float32(-87.0), np.float32(89.0)


@njit(fastmath=KERNEL_MATH, error_model="numpy", cache=True, nogil=True)
def gelu_row_(row):
    """One vectorized pass: the exponent bounded so that `exp32_within` needs no branch, and
    numpy's error model so that the division has no zero test (1 + e**t >= 1)."""
    for j in range(row.shape[0]):
        v = row[j]
        t = np.float32(-2.0) * GELU_C * (v + np.float32(0.044715) * v * v * v)
        t = min(max(t, GELU_EXP_MIN), GELU_EXP_MAX)
        row[j] = v / (np.float32(1.0) + exp32_within(t))


def compile_gelu(needs: KernelNeeds) -> None:
    """float32, and as `needs` says, quantized or rounded to bfloat16."""
    needs.log("GELU")
    int8 = Int8Weight.from_rows(np.zeros((1, 1), np.int8), np.zeros(1, np.float32))
    for feeds in (None, int8) if needs.int8 else (None,):
        gelu(np.zeros((1, 1), np.float32), feeds)
    if needs.bf16_packed:
        gelu_bf16_(np.zeros((1, 1), np.float32), np.empty((1, 2), np.uint16))


# Exact GELU's erf is Abramowitz and Stegun's 7.1.26, a degree-5 polynomial in 1 / (1 + p|z|)
# times e**-z**2, within 1.5e-7 of erf everywhere (below float32's resolution of the values GELU
# adds it to): with `exp32_within`, a few multiply-adds and no branch, so the loop vectorizes
# (numba calls libm's scalar erf, which does not).
INV_SQRT2 = np.float32(0.7071067811865476)
ERF_P = np.float32(0.3275911)
ERF_A1, ERF_A2, ERF_A3 = np.float32(0.254829592), np.float32(-0.284496736), np.float32(1.421413741)
ERF_A4, ERF_A5 = np.float32(-1.453152027), np.float32(1.061405429)


@njit(fastmath=KERNEL_MATH, error_model="numpy", cache=True, nogil=True, parallel=True)
def gelu_erf_(x, bias):
    """x + bias, then x * Phi(x), IN PLACE (x: [n, I], C-contiguous float32; bias: [I], the
    linear layer's, added in the same pass, or None; `bert_reference.gelu`); returns x."""
    if on_threads(x.size):
        for i in prange(x.shape[0]):
            gelu_erf_row_(x[i], bias)
    else:
        for i in range(x.shape[0]):
            gelu_erf_row_(x[i], bias)
    return x


@njit(fastmath=KERNEL_MATH, error_model="numpy", cache=True, nogil=True)
def gelu_erf_row_(row, bias):
    if bias is None:
        for j in range(row.shape[0]):
            row[j] = gelu_erf_one(row[j])
    else:
        for j in range(row.shape[0]):
            row[j] = gelu_erf_one(row[j] + bias[j])


@njit(fastmath=KERNEL_MATH, error_model="numpy", cache=True, nogil=True, inline="always")
def gelu_erf_one(v):
    """Phi(v) = (1 + erf(v / sqrt 2)) / 2, and 1 - erf(|z|) = poly(t) e**-z**2: so Phi is
    1 - tail / 2 for v >= 0 and tail / 2 below, a select rather than a branch."""
    z = abs(v) * INV_SQRT2
    t = np.float32(1.0) / (np.float32(1.0) + ERF_P * z)
    poly = t * (ERF_A1 + t * (ERF_A2 + t * (ERF_A3 + t * (ERF_A4 + t * ERF_A5))))
    half_tail = np.float32(0.5) * poly * exp32_within(max(-z * z, np.float32(-87.0)))
    return v * (np.float32(1.0) - half_tail if v >= 0 else half_tail)


def compile_gelu_erf() -> None:
    """With a bias (a read-only one too: memory-mapped weights) and without."""
    read_only = np.zeros(2, np.float32)
    read_only.flags.writeable = False
    for bias in (None, np.zeros(2, np.float32), read_only):
        gelu_erf_(np.zeros((1, 2), np.float32), bias)


@njit(fastmath=KERNEL_MATH, cache=True, nogil=True, parallel=True)
def silu_mul(h):
    """SwiGLU's gate: h ([n, 2I], rows gate | up) -> silu(gate) * up, [n, I], a new array
    (`llama_reference.swiglu`); silu(g) = g / (1 + e**-g)."""
    out = np.empty((h.shape[0], h.shape[1] // 2), np.float32)
    if on_threads(out.size):
        for i in prange(h.shape[0]):
            silu_mul_row_(h[i], out[i])
    else:
        for i in range(h.shape[0]):
            silu_mul_row_(h[i], out[i])
    return out


# error_model="numpy": with Python's, every division checks its divisor for zero and may raise,
# and that branch kept the loop from vectorizing (1 + e**-g is never 0 anyway).
@njit(fastmath=KERNEL_MATH, cache=True, nogil=True, error_model="numpy")
def silu_mul_row_(h, out):
    half = out.shape[0]
    for j in range(half):
        g = h[j]
        out[j] = g / (np.float32(1.0) + exp32(-g)) * h[half + j]


def compile_silu_mul() -> None:
    silu_mul(np.zeros((1, 2), np.float32))
