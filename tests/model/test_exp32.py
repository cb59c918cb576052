"""exp32, the vectorizing float32 exp of the kernels, against float64 exp."""

from __future__ import annotations

import numpy as np
from numba import njit

from nanovllm.model.kernels import KERNEL_MATH, exp32


@njit(fastmath=KERNEL_MATH)  # a caller that allows reassociation, like every kernel
def exp_all(t, out):
    for i in range(t.shape[0]):
        out[i] = exp32(t[i])


def test_exp32_is_within_two_float32_ulps_over_its_range():
    t = np.concatenate([np.linspace(-87, 88, 2_000_001, dtype=np.float32),
                        np.float32([0.0, -0.0, 1e-30, -1e-30, 0.5 * np.log(2), -0.5 * np.log(2)])])
    out = np.empty_like(t)
    exp_all(t, out)
    expected = np.exp(t.astype(np.float64))
    ulp = np.spacing(expected.astype(np.float32)).astype(np.float64)
    assert (np.abs(out - expected) / ulp).max() <= 2


def test_exp32_is_zero_below_and_inf_above_its_range_and_keeps_nan():
    t = np.float32([-87.01, -1e4, -np.inf, 88.01, 1e4, np.inf, np.nan])
    out = np.empty_like(t)
    exp_all(t, out)
    assert (out[:3] == 0).all() and np.isposinf(out[3:6]).all() and np.isnan(out[6])
