"""The exact (erf) GELU of BERT-family encoders as a compiled loop, `reference_bert.gelu`'s
fast path.

numba calls libm's scalar erf, which does not vectorize. Here erf is Abramowitz and Stegun's
7.1.26, a degree-5 polynomial in 1 / (1 + p|z|) times e**-z**2, within 1.5e-7 of erf
everywhere: below float32's resolution of the values GELU adds it to. With `exp32_within` it is
a handful of multiply-adds and no branch, so the loop vectorizes.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from nanovllm.model.kernels import KERNEL_MATH, exp32_within

# Up to this many rows GELU runs on the calling thread: a parallel region's start costs more.
SERIAL_MAX_ROWS = 32
INV_SQRT2 = np.float32(0.7071067811865476)
P = np.float32(0.3275911)
A1, A2, A3 = np.float32(0.254829592), np.float32(-0.284496736), np.float32(1.421413741)
A4, A5 = np.float32(-1.453152027), np.float32(1.061405429)


def gelu_erf_(x: np.ndarray) -> np.ndarray:
    """x * Phi(x) IN PLACE (x: [n, I], C-contiguous float32); returns x."""
    (gelu_erf_rows_ if x.shape[0] <= SERIAL_MAX_ROWS else gelu_erf_parallel_)(x)
    return x


@njit(fastmath=KERNEL_MATH, error_model="numpy", cache=True, nogil=True)
def gelu_erf_rows_(x):
    for i in range(x.shape[0]):
        gelu_erf_row_(x[i])


@njit(fastmath=KERNEL_MATH, error_model="numpy", cache=True, nogil=True, parallel=True)
def gelu_erf_parallel_(x):
    for i in prange(x.shape[0]):
        gelu_erf_row_(x[i])


@njit(fastmath=KERNEL_MATH, error_model="numpy", cache=True, nogil=True)
def gelu_erf_row_(row):
    """Phi(v) = (1 + erf(v / sqrt 2)) / 2, and 1 - erf(|z|) = poly(t) e**-z**2: so Phi is
    1 - tail / 2 for v >= 0 and tail / 2 below, a select rather than a branch."""
    for j in range(row.shape[0]):
        v = row[j]
        z = abs(v) * INV_SQRT2
        t = np.float32(1.0) / (np.float32(1.0) + P * z)
        poly = t * (A1 + t * (A2 + t * (A3 + t * (A4 + t * A5))))
        half_tail = np.float32(0.5) * poly * exp32_within(max(-z * z, np.float32(-87.0)))
        row[j] = v * (np.float32(1.0) - half_tail if v >= 0 else half_tail)


def compile_gelu_erf() -> None:
    for rows in (1, SERIAL_MAX_ROWS + 1):
        gelu_erf_(np.zeros((rows, 2), np.float32))
