"""exp32, the vectorizing float32 exp of the kernels, against float64 exp."""

from __future__ import annotations

import numpy as np
from numba import njit

from nanovllm.model.kernels.shared import KERNEL_MATH, exp32, exp32_within


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


@njit(fastmath=KERNEL_MATH)
def exp_within_all(t, out):
    for i in range(t.shape[0]):
        out[i] = exp32_within(t[i])


def test_exp32_within_is_exp32_inside_its_bounds_and_inf_where_2_to_n_overflows():
    """GELU's branch-free exp: exp32's bits on [-87, 88]; above, e**t until 2**n overflows
    (t = 88.37), then inf up to its bound, 89."""
    t = np.linspace(-87, 88, 200_001, dtype=np.float32)
    within, plain = np.empty_like(t), np.empty_like(t)
    exp_within_all(t, within)
    exp_all(t, plain)
    np.testing.assert_array_equal(within, plain)
    top = np.float32([88.2, 88.37, 88.38, 88.72, 89.0])  # 2**n overflows from t = 127.5 ln 2
    out = np.empty_like(top)
    exp_within_all(top, out)
    expected = np.exp(top[:2].astype(np.float64))
    assert (np.abs(out[:2] - expected) <= 2 * np.spacing(out[:2])).all()
    assert np.isinf(out[2:]).all()
