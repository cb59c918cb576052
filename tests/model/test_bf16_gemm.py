"""bfloat16 weights on every path this CPU can run: the avx512bf16 kernel
(`model/kernels/bf16_gemm.py`, x rounded to bfloat16) against its plain reference, the packed
layout, the activations' rounding, and the widened path (BLAS on the weights as float32) on packed
weights. The forced generic CPU and the engine's packing are in test_cpu.py; the model level in
test_quant.py."""

from __future__ import annotations

import numpy as np
import pytest
from numba import config

from nanovllm.model.architectures import gpt2_reference as ref
from nanovllm.model.kernels.bf16_gemm import (
    BF16Rows,
    bf16_matmul,
    reference,
    round_activations,
    round_rows,
    round_rows_parallel,
    widen_packed_rows,
)
from nanovllm.model.kernels.parallel import PARALLEL_MIN_WORK
from nanovllm.model.layers import linear as linear_module
from nanovllm.model.layers.activations import gelu
from nanovllm.model.layers.linear import (
    BF16_MAX_ROWS,
    host_bf16_kernel,
    host_packs_bfloat16,
    linear,
    takes_bf16_rows,
)
from nanovllm.model.layers.norms import layer_norm
from nanovllm.model.platform.cpu import BF16_KERNELS, bf16_kernels, kernel_path
from nanovllm.model.weights.quant import (
    BLOCK,
    PAIR,
    PackedBF16Weight,
    bfloat16_bits,
    dequantize,
    gather_rows,
    pack_bfloat16,
    round_to_bfloat16,
    to_bfloat16,
)
from tests.model.test_kernels_vs_reference import assert_within, f32, sum_error

U = 2.0 ** -24
RUNNABLE = bf16_kernels(kernel_path().features)
# rows and columns left over by every panel (8 x 3, one row x 8, then single blocks), k odd,
# k = 1, k below and above one pair
SHAPES = [(1, 768, 2305), (1, 3072, 67), (5, 767, 33), (9, 100, 9), (64, 768, 131),
          (70, 31, 14), (1, 1, 1), (3, 66, 200), (8, 768, 300), (13, 2, 17), (2, 1, 129)]


def packed(rows: int, k: int, seed: int) -> PackedBF16Weight:
    return PackedBF16Weight.from_bits(to_bfloat16(f32(rows, k, seed=seed, scale=0.02)).bits)


def runnable_kernel() -> None:
    if "avx512bf16" not in RUNNABLE:
        pytest.skip("this CPU has no AVX512_BF16 (vdpbf16ps)")
    if config.DISABLE_JIT:
        pytest.skip("NUMBA_DISABLE_JIT: the avx512bf16 kernel is LLVM IR, compiled only")


def test_every_kernel_has_its_cpu_features():
    assert tuple(BF16_KERNELS) == ("avx512bf16", "widen")
    assert bf16_kernels(set()) == ["widen"]
    assert bf16_kernels({"avx2", "fma", "avx512f", "avx512bw"}) == ["widen"]
    assert bf16_kernels({"avx512f", "avx512bw", "avx512bf16"}) == ["avx512bf16", "widen"]


def test_host_runs_the_best_kernel_the_cpu_has_and_packs_for_it():
    expected = "widen" if config.DISABLE_JIT else RUNNABLE[0]
    assert host_bf16_kernel() == expected
    assert host_packs_bfloat16() == (expected == "avx512bf16")
    assert f"bfloat16 dot products: {RUNNABLE[0]}" in kernel_path().describe()


def test_packed_weights_hold_every_element_once_in_blocks_of_pairs():
    bits = np.random.default_rng(7).integers(0, 2**15, (37, 11)).astype(np.uint16)
    p = pack_bfloat16(bits)
    assert p.shape == (3, 6, BLOCK, PAIR) and p.dtype == np.uint16 and p.flags.c_contiguous
    b, g, j, i = np.indices(p.shape)
    rows, cols = BLOCK * b + j, PAIR * g + i
    inside = (rows < 37) & (cols < 11)
    np.testing.assert_array_equal(p[inside], bits[rows[inside], cols[inside]])
    assert (p[~inside] == 0).all()  # k padded to a whole pair, outputs to a whole block


def test_packed_weight_gives_its_rows_back_exactly():
    w = to_bfloat16(f32(37, 5, seed=3))
    p = PackedBF16Weight.from_bits(w.bits)
    assert p.shape == (37, 5) and p.nbytes == 48 * 6 * 2
    np.testing.assert_array_equal(dequantize(p), dequantize(w))
    for start, end in ((0, None), (3, 20), (16, 32), (36, 37), (5, 5)):
        np.testing.assert_array_equal(dequantize(p, start, end), dequantize(w, start, end))
    ids = np.array([36, 0, 16, 16, 15])  # the embedding's lookup
    np.testing.assert_array_equal(gather_rows(p, ids), gather_rows(w, ids))
    widened = np.empty((20, 5), np.float32)
    widen_packed_rows(p.packed, 17, widened)
    np.testing.assert_array_equal(widened, dequantize(w, 17, 37))


def test_activations_round_to_nearest_bfloat16_like_the_weights():
    x = f32(6, 301, seed=1, scale=3) * 10.0 ** np.random.default_rng(2).integers(-30, 30, 301)
    x = x.astype(np.float32)
    # ties to even both ways, a subnormal, signed zeros, infinities
    x[0, :8] = [1.0 + 2**-8, 1.0 + 3 * 2**-8, -1e-40, 0.0, -0.0, np.inf, -np.inf, 3.0]
    out = np.full((6, 302), 7, np.uint16)
    round_rows(x, out)
    np.testing.assert_array_equal(out[:, :301], bfloat16_bits(x))
    assert (out[:, 301] == 0).all()  # the pad of the last pair
    on_threads = np.full_like(out, 7)
    round_rows_parallel(x, on_threads)
    np.testing.assert_array_equal(on_threads, out)
    plain = np.full_like(out, 7)
    getattr(round_rows, "py_func", round_rows)(x[:2], plain[:2])  # NUMBA_DISABLE_JIT's
    np.testing.assert_array_equal(plain[:2], out[:2])
    np.testing.assert_array_equal(round_to_bfloat16(x), (out[:, :301].astype(np.uint32) << 16)
                                  .view(np.float32))


def test_a_nan_stays_a_nan():
    """Rounding a NaN's bits could carry its mantissa into infinity's."""
    x = np.array([[np.nan, -np.nan, 1.0]], np.float32)
    x[0, 1] = np.uint32(0xFFFFFFFF).view(np.float32)  # a NaN whose rounding would carry
    x = np.concatenate([x, np.uint32([[0x7F800001, 0x7FFFFFFF, 0]]).view(np.float32)])
    out = np.empty((2, 4), np.uint16)
    round_rows(x, out)
    assert np.isnan((out[:, :3].astype(np.uint32) << 16).view(np.float32)[:, :2]).all()


@pytest.mark.parametrize("rows, k, cols", SHAPES)
def test_kernel_matches_reference_within_rounding(rows, k, cols):
    """Both multiply the same bfloat16 numbers (products exact in float32); the kernel sums
    them in float32, the reference in float64: `sum_error` apart, times sum |products|."""
    runnable_kernel()
    x, w = f32(rows, k, seed=2), packed(cols, k, seed=3)
    magnitude = np.abs(round_to_bfloat16(x)).astype(np.float64) @ np.abs(dequantize(w)).T
    assert_within(bf16_matmul(x, w), reference(x, w).astype(np.float64),
                  sum_error(k) * magnitude)


def test_kernel_multiplies_the_activations_rounded_to_bfloat16():
    """Against the unrounded x the kernel is off by x's rounding, up to 2**-9 of each product
    (and is: the rounding is not skipped), and exactly as far as the reference."""
    runnable_kernel()
    x, w = f32(7, 300, seed=4), packed(40, 300, seed=5)
    got = bf16_matmul(x, w)
    magnitude = np.abs(x).astype(np.float64) @ np.abs(dequantize(w)).T
    exact = ref.linear(x, dequantize(w)).astype(np.float64)
    assert_within(got, exact, (2.0 ** -9 + sum_error(300)) * magnitude)
    assert np.abs(got - exact).max() > sum_error(300) * magnitude.max()


@pytest.mark.parametrize("rows", [1, 8, BF16_MAX_ROWS])
def test_linear_takes_the_kernel_on_packed_weights(rows):
    runnable_kernel()
    x, w, b = f32(rows, 130, seed=6), packed(33, 130, seed=7), f32(33, seed=8)
    np.testing.assert_array_equal(linear(x, w, b), bf16_matmul(x, w) + b)


@pytest.mark.parametrize("rows", [1, 5, 64])
def test_kernel_adds_bias_and_residual_as_it_stores(rows):
    """The bias and the residual are added as the kernel stores its sums: the same float32 sums
    as numpy adding them after, within the reference's bound, the residual updated in place."""
    runnable_kernel()
    x, w, b = f32(rows, 200, seed=13), packed(50, 200, seed=14), f32(50, seed=15)
    before = f32(rows, 50, seed=16)
    plain = bf16_matmul(x, w)
    residual = before.copy()
    got = bf16_matmul(x, w, b, residual)
    assert got is residual
    np.testing.assert_array_equal(got, before + (plain + b))
    magnitude = np.abs(round_to_bfloat16(x)).astype(np.float64) @ np.abs(dequantize(w)).T
    assert_within(got, reference(x, w, b, before).astype(np.float64),
                  sum_error(200) * magnitude + 4 * U * (np.abs(before) + np.abs(b)))
    np.testing.assert_array_equal(linear(x, w, b, before.copy()), got)


@pytest.mark.parametrize("rows, k, cols", [(BF16_MAX_ROWS + 1, 65, 30), (3, 768, 31)])
def test_widened_path_on_packed_weights_matches_reference(monkeypatch, rows, k, cols):
    """Above BF16_MAX_ROWS (and wherever the kernel is not compiled) packed weights are widened
    a chunk at a time for BLAS: x is not rounded there, so the reference is on x itself."""
    monkeypatch.setattr(linear_module, "BLAS_CHUNK", 7)
    if rows < BF16_MAX_ROWS:
        monkeypatch.setattr(linear_module, "BF16_MAX_ROWS", rows - 1)
    x, w = f32(rows, k, seed=9), packed(cols, k, seed=10)
    plain = dequantize(w)
    magnitude = np.abs(x).astype(np.float64) @ np.abs(plain).T.astype(np.float64)
    assert_within(linear(x, w), ref.linear(x, plain), (sum_error(k + 1) + 4 * U) * magnitude)



@pytest.mark.parametrize("takes_bfloat", [True, False], ids=["bfloat-pairs", "i32-pairs"])
def test_either_signature_of_the_intrinsic_gives_the_kernels_sums(monkeypatch, takes_bfloat):
    """The panel built for either of LLVM's signatures of `vdpbf16ps` (`dot_takes_bfloat`), where
    this LLVM accepts it (newer ones upgrade the older form), gives the kernel's sums exactly."""
    runnable_kernel()
    from llvmlite import ir
    from numba import njit

    from nanovllm.model.kernels import bf16_dot

    operand = (ir.VectorType(bf16_dot.BFloat16Type(), 2 * BLOCK) if takes_bfloat
               else ir.VectorType(ir.IntType(32), BLOCK))
    if not bf16_dot.dot_verifies(operand):
        pytest.skip(f"this LLVM does not take {operand} pairs")
    x, w = f32(2, 70, seed=11), packed(32, 70, seed=12)
    expected = bf16_matmul(x, w)
    monkeypatch.setattr(bf16_dot, "dot_takes_bfloat", lambda: takes_bfloat)

    @njit  # (compiled here, after the patch: not from the cache)
    def panel(xb, wp, acc):
        pairs = wp.shape[1]
        bf16_dot.bf16_panel(2, 2, xb.ctypes.data, pairs * 4, wp.ctypes.data,
                            pairs * bf16_dot.PAIR_BYTES, pairs, acc.ctypes.data,
                            2 * BLOCK * 4)

    acc = np.empty((2, 2 * BLOCK), np.float32)
    xb = np.empty((2, 70), np.uint16)
    round_rows(x, xb)
    panel(xb, w.packed, acc)
    np.testing.assert_array_equal(acc, expected)


@pytest.mark.parametrize("rows, e", [(1, 768), (5, 7), (PARALLEL_MIN_WORK // 3072 + 1, 3072),
                                     (40, 6)])
def test_layer_norm_and_gelu_round_as_bf16_matmul_would(rows, e):
    """Fed to a packed bfloat16 layer that takes their rows, layer norm and GELU round each row
    as they make it: the very bits `bf16_matmul` rounds their float32 output to (serial and on
    threads; the padding to a whole pair stays zero), so the layer gives the same sums."""
    runnable_kernel()
    w = packed(17, e, seed=9)
    x = 30 + f32(rows, e, seed=4, scale=3)
    g, b = 1 + f32(e, seed=5, scale=0.3), f32(e, seed=6, scale=0.1)
    h = f32(rows, e, seed=7, scale=4)
    h[0, :2] = [0.0, -1e4]
    for got, float_rows in ((layer_norm(x, g, b, 1e-5, feeds=w), layer_norm(x, g, b, 1e-5)),
                            (gelu(h.copy(), feeds=w), gelu(h.copy()))):
        assert isinstance(got, BF16Rows) and got.shape == (rows, e)
        np.testing.assert_array_equal(got.bits, round_activations(float_rows, w.packed.shape[1]))
        np.testing.assert_array_equal(linear(got, w), linear(float_rows, w))
    in_place = h.copy()
    gelu(in_place, feeds=w)
    np.testing.assert_array_equal(in_place, gelu(h.copy()))  # still GELU in place


def test_rows_past_the_kernel_or_unpacked_weights_stay_float32():
    """Where `linear` would not run the kernel on the rows (more than BF16_MAX_ROWS, or a
    bfloat16 matrix not packed for it), layer norm and GELU return float32 rows as without
    `feeds`."""
    x = f32(3, 8, seed=1)
    g, b = np.ones(8, np.float32), np.zeros(8, np.float32)
    unpacked = to_bfloat16(f32(4, 8, seed=2))
    assert not takes_bf16_rows(packed(4, 8, seed=3), BF16_MAX_ROWS + 1)
    assert not takes_bf16_rows(unpacked, 3)
    np.testing.assert_array_equal(layer_norm(x, g, b, 1e-5, feeds=unpacked),
                                  layer_norm(x, g, b, 1e-5))
    np.testing.assert_array_equal(gelu(x.copy(), feeds=unpacked), gelu(x.copy()))
