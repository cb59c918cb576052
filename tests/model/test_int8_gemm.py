"""The W8A8 kernels (`model/kernels/int8_gemm.py`): every kernel this CPU can run, against exact
integer products and against the plain reference (`dequantize` + `gpt2_reference.linear` on the
quantized activations), with the bound their roundings give. The forced generic CPU is in
test_cpu.py."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from nanovllm.model.architectures import gpt2_reference as ref
from nanovllm.model.kernels.int8_gemm import (
    KERNELS,
    PORTABLE,
    first_compiling_kernel,
    int8_linear,
    int8_matmul,
    matmul_portable,
    quantize_rows,
    quantize_rows_parallel,
)
from nanovllm.model.kernels.shared import NO_BIAS, as_bias
from nanovllm.model.layers.linear import host_int8_kernel
from nanovllm.model.platform.cpu import INT8_KERNELS, int8_kernels, kernel_path
from nanovllm.model.weights.quant import (
    BLOCK,
    GROUP,
    Int8Weight,
    dequantize,
    pack_int8,
    quantize_int8,
)
from tests.model.test_kernels_vs_reference import assert_within, f32, sum_error

U = 2.0 ** -24
RUNNABLE = int8_kernels(kernel_path().features)
# rows and columns left over by every tile; K a multiple of 64 and not, and below one vector
SHAPES = [(1, 768, 2305), (1, 3072, 67), (5, 767, 33), (9, 100, 9), (64, 768, 131),
          (70, 31, 14), (1, 1, 1), (3, 66, 200), (8, 768, 300)]


def reference_linear(xq: np.ndarray, xs: np.ndarray, w: Int8Weight) -> np.ndarray:
    """What `int8_matmul` stands for, in plain float32 numpy."""
    return ref.linear(xq.astype(np.float32) * xs[:, None], dequantize(w))


def runnable(kernel: str) -> str:
    if kernel not in RUNNABLE:
        pytest.skip(f"this CPU cannot run the {kernel} kernel")
    return kernel


def test_every_kernel_has_its_cpu_features():
    assert tuple(INT8_KERNELS) == KERNELS
    assert int8_kernels(set()) == ["portable"]
    assert int8_kernels({"avx2", "fma"}) == ["avx2", "portable"]
    assert int8_kernels({"avx2", "avxvnni"}) == ["avxvnni", "avx2", "portable"]
    skylake = {"avx2", "avx512f", "avx512bw", "avx512vl"}
    assert int8_kernels(skylake) == ["avx512bw", "avx2", "portable"]
    assert int8_kernels(skylake | {"avx512vnni"}) == list(KERNELS)


def test_activations_quantize_per_row_exactly_like_weights():
    x = f32(40, 300, seed=1, scale=3)
    x[3] = 0.0                         # scale 0, no division by zero
    x[4, :3] = [127.0, 0.5, -2.5]      # steps of 1: ties go to even
    x[5, 7] = 1e4                      # one outlier
    q, scale = np.empty(x.shape, np.int8), np.empty(40, np.float32)
    quantize_rows(x, q, scale)
    expected = quantize_int8(x)
    np.testing.assert_array_equal(q, expected.q)
    np.testing.assert_array_equal(scale, expected.scale)
    assert list(q[4, :3]) == [127, 0, -2] and (q[3] == 0).all()
    on_threads, on_threads_scale = np.empty_like(q), np.empty_like(scale)
    quantize_rows_parallel(x, on_threads, on_threads_scale)
    np.testing.assert_array_equal(on_threads, q)
    np.testing.assert_array_equal(on_threads_scale, scale)
    plain_q, plain_scale = np.empty_like(q), np.empty_like(scale)
    quantize_rows.py_func(x[:6], plain_q[:6], plain_scale[:6])  # NUMBA_DISABLE_JIT's version
    np.testing.assert_array_equal(plain_q[:6], q[:6])


def test_a_nan_in_a_row_makes_its_scale_nan_not_its_neighbours():
    """The peak is taken on the float32 bits (`row_peak`): a NaN is the largest, never skipped."""
    x = f32(3, 40, seed=8)
    x[1, 17] = np.nan
    q, scale = np.empty(x.shape, np.int8), np.empty(3, np.float32)
    quantize_rows(x, q, scale)
    assert np.isnan(scale[1]) and not np.isnan(scale[[0, 2]]).any()
    np.testing.assert_array_equal(q[[0, 2]], quantize_int8(x[[0, 2]]).q)


def test_packed_weights_hold_every_element_once_in_blocks_of_groups():
    q = np.random.default_rng(7).integers(-127, 128, (37, 10)).astype(np.int8)
    packed = pack_int8(q)
    assert packed.shape == (3, 3, BLOCK, GROUP) and packed.flags.c_contiguous
    b, g, j, i = np.indices(packed.shape)
    rows, cols = BLOCK * b + j, GROUP * g + i
    inside = (rows < 37) & (cols < 10)
    np.testing.assert_array_equal(packed[inside], q[rows[inside], cols[inside]])
    assert (packed[~inside] == 0).all()
    w = Int8Weight.from_rows(q, np.ones(37, np.float32))
    np.testing.assert_array_equal(w.q, q)
    np.testing.assert_array_equal(w.take(np.array([36, 0, 17, 17])), q[[36, 0, 17, 17]])
    np.testing.assert_array_equal(w.sums, q.sum(axis=1))


def exact_case(rows: int, k: int, cols: int, seed: int):
    rng = np.random.default_rng(seed)
    xq = rng.integers(-127, 128, (rows, k)).astype(np.int8)
    w = Int8Weight.from_rows(rng.integers(-127, 128, (cols, k)).astype(np.int8),
                             np.ones(cols, np.float32))
    return xq, w


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("rows, k, cols", SHAPES)
def test_integer_sums_are_exact(kernel, rows, k, cols):
    """Scales of 1: the output is the int32 sum itself (exact in float32 below 2**24)."""
    xq, w = exact_case(rows, k, cols, seed=rows + k + cols)
    out = np.empty((rows, cols), np.float32)
    int8_matmul(xq, np.ones(rows, np.float32), w, out, runnable(kernel))
    np.testing.assert_array_equal(out, xq.astype(np.int64) @ w.q.T.astype(np.int64))


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("sign", [1, -1])
def test_largest_products_do_not_saturate(kernel, sign):
    """+-127 everywhere: vpmaddubsw's pairs reach 2 * 127**2, just below int16's limit, and
    vpdpbusd's offset x reaches 255."""
    k = 1000
    xq = np.full((5, k), 127 * sign, np.int8)
    xq[1] *= -1
    wq = np.full((6, k), -127, np.int8)
    wq[2] *= -1
    w = Int8Weight.from_rows(wq, np.ones(6, np.float32))
    out = np.empty((5, 6), np.float32)
    int8_matmul(xq, np.ones(5, np.float32), w, out, runnable(kernel))
    np.testing.assert_array_equal(out, xq.astype(np.int64) @ w.q.T.astype(np.int64))


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("rows, k, cols", SHAPES)
def test_kernel_matches_reference_within_rounding(kernel, rows, k, cols):
    """The kernel rounds the exact sum to float32 and scales it twice (3 roundings); the
    reference rounds each dequantized element (2) and sums in float32 (`sum_error`)."""
    x = f32(rows, k, seed=2)
    w = quantize_int8(f32(cols, k, seed=3, scale=0.02))
    xq, xs = np.empty(x.shape, np.int8), np.empty(rows, np.float32)
    quantize_rows(x, xq, xs)
    expected = reference_linear(xq, xs, w)
    magnitude = (np.abs(xq) * xs[:, None]).astype(np.float64) @ (
        np.abs(w.q) * w.scale[:, None]).T.astype(np.float64)
    got = int8_linear(x, w, runnable(kernel))
    assert_within(got, expected, (sum_error(k) + 6 * U) * magnitude)


def test_every_kernel_gives_the_same_floats():
    """The integer sums are exact and scaled in the same order: bit-identical outputs."""
    x, w = f32(67, 777, seed=4), quantize_int8(f32(301, 777, seed=5))
    outputs = {kernel: int8_linear(x, w, kernel) for kernel in RUNNABLE}
    for kernel, out in outputs.items():
        np.testing.assert_array_equal(out, outputs["portable"], err_msg=kernel)


def test_portable_kernel_as_plain_python_is_the_compiled_one():
    """What NUMBA_DISABLE_JIT=1 runs (the loops as Python) computes the same numbers."""
    xq, w = exact_case(3, 70, 9, seed=6)
    xs = np.array([0.5, 2.0, 0.1], np.float32)
    xq = np.pad(xq, ((0, 0), (0, 2)))  # K padded to the packed groups, as int8_matmul does
    bias = as_bias(f32(9, seed=7))
    for b, accumulate in ((NO_BIAS, False), (bias, False), (bias, True)):
        compiled = f32(3, 9, seed=8)
        plain = compiled.copy()
        matmul_portable(xq, xs, w.packed, w.scale, w.sums, b, accumulate, compiled)
        matmul_portable.py_func(xq, xs, w.packed, w.scale, w.sums, b, accumulate, plain)
        np.testing.assert_array_equal(plain, compiled)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("rows, k, cols", SHAPES)
def test_bias_and_residual_are_added_as_the_outputs_are_stored(kernel, rows, k, cols):
    """`out = x @ w.T + b` and `residual += x @ w.T + b` in the kernel's epilogue: exactly the
    floats of the separate passes (the same additions in the same order), on the panels and
    on the matrix's edge; the reference is `gpt2_reference.linear` with the bias."""
    kernel = runnable(kernel)
    x = f32(rows, k, seed=9)
    w = quantize_int8(f32(cols, k, seed=10, scale=0.02))
    bias, residual = f32(cols, seed=11), f32(rows, cols, seed=12)
    plain = int8_linear(x, w, kernel)
    with_bias = int8_linear(x, w, kernel, bias)
    np.testing.assert_array_equal(with_bias, plain + bias)
    added = residual.copy()
    assert int8_linear(x, w, kernel, bias, residual=added) is added
    np.testing.assert_array_equal(added, residual + (plain + bias))
    unbiased = residual.copy()
    int8_linear(x, w, kernel, residual=unbiased)
    np.testing.assert_array_equal(unbiased, residual + plain)
    read_only = bias.copy()
    read_only.flags.writeable = False  # a memory-mapped checkpoint's
    np.testing.assert_array_equal(int8_linear(x, w, kernel, read_only), with_bias)
    xq, xs = np.empty(x.shape, np.int8), np.empty(rows, np.float32)
    quantize_rows(x, xq, xs)
    expected = ref.linear(xq.astype(np.float32) * xs[:, None], dequantize(w), bias)
    magnitude = (np.abs(xq) * xs[:, None]).astype(np.float64) @ (
        np.abs(w.q) * w.scale[:, None]).T.astype(np.float64)
    # the bound of test_kernel_matches_reference_within_rounding, and one rounding of the sum
    # with the bias on each side
    bound = (sum_error(k) + 6 * U) * magnitude + 2 * U * (magnitude + np.abs(bias))
    assert_within(with_bias, expected, bound)


def test_host_path_runs_the_best_kernel_the_cpu_has():
    path = kernel_path()
    assert path.int8 == RUNNABLE[0]
    assert f"int8 dot products: {path.int8}" in path.describe()


def test_the_best_kernel_compiles_with_this_numba():
    """What the process runs is the best kernel the CPU has: with every numba and LLVM the
    project allows (CI runs these tests on the lowest too), no kernel falls back."""
    assert host_int8_kernel() == RUNNABLE[0]


def test_a_kernel_that_does_not_compile_is_passed_over_with_one_warning(caplog):
    assert first_compiling_kernel(["no-such-isa", "nor-this", PORTABLE]) == PORTABLE
    [line] = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert line.startswith("int8 dot products: the no-such-isa, nor-this kernel(s) do not "
                           "compile or run here (")
    assert line.endswith("); running portable instead")
