"""float16 KV storage inside kernels: bit-exact widening and rounding, against numpy's float16."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from numba import config, njit

from nanovllm.model.kernels.shared import (
    KERNEL_MATH,
    as_kernel_array,
    float16_bits_to_float32,
    float32_to_float16_bits,
    from_float32,
    to_float32,
)
from nanovllm.model.platform.cpu import kernel_path


@njit(fastmath=KERNEL_MATH)  # the flags the attention kernel compiles it with
def widen_all(bits, out):
    for i in range(bits.shape[0]):
        out[i] = to_float32(bits[i])


@njit
def round_all(x, out):
    for i in range(x.shape[0]):
        out[i] = float32_to_float16_bits(x[i])


@njit
def round_all_into_cache(x, out):  # (F16C's instruction where the CPU has it, as write_slots)
    for i in range(x.shape[0]):
        out[i] = from_float32(x[i], out)


@njit(fastmath=KERNEL_MATH)
def widen_all_by_bits(bits, out):
    for i in range(bits.shape[0]):
        out[i] = float16_bits_to_float32(bits[i])


@pytest.mark.parametrize("widen", [widen_all, widen_all_by_bits], ids=["to_float32", "bits"])
def test_every_finite_float16_widens_exactly(widen):
    """Subnormals and both zeros included (infinity is never stored, see below): both ways,
    F16C's instruction (to_float32 where the CPU has it) and moving the bits (elsewhere)."""
    halves = np.arange(2**16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    finite = halves[np.isfinite(halves)]
    out = np.empty(finite.shape, np.float32)
    widen(as_kernel_array(finite), out)
    assert np.array_equal(out.view(np.uint32), finite.astype(np.float32).view(np.uint32))


def test_to_float32_takes_the_f16c_instruction_where_the_cpu_has_it():
    if config.DISABLE_JIT or "f16c" not in kernel_path().features:
        pytest.skip("compiled only, where the CPU (or NUMBA_CPU_NAME) has F16C")
    out = np.empty(1, np.float32)
    widen_all(np.zeros(1, np.uint16), out)
    asm = "".join(widen_all.inspect_asm().values())
    assert "vcvtph2ps" in asm


def test_from_float32_takes_the_f16c_instruction_where_the_cpu_has_it():
    if config.DISABLE_JIT or "f16c" not in kernel_path().features:
        pytest.skip("compiled only, where the CPU (or NUMBA_CPU_NAME) has F16C")
    round_all_into_cache(np.zeros(1, np.float32), np.empty(1, np.uint16))
    assert "vcvtps2ph" in "".join(round_all_into_cache.inspect_asm().values())


def test_float32_widens_to_itself():
    x = np.array([1.5, -0.0, 3e38, 1e-45], np.float32)
    out = np.empty_like(x)
    widen_all(as_kernel_array(x), out)
    assert np.array_equal(out.view(np.uint32), x.view(np.uint32))


@pytest.mark.parametrize("round_", [round_all, round_all_into_cache], ids=["bits", "cache"])
def test_rounding_to_float16_matches_numpy_bit_for_bit_and_saturates(round_):
    """numpy's rounding, except that what numpy turns into infinity is stored as +-65504: the
    kernel does not decode infinity, so both readers of the cache see the same finite value.
    Both ways: moving the bits, and F16C's instruction (from_float32 where the CPU has it)."""
    rng = np.random.default_rng(0)
    edges = np.array([0, 0x80000000, 0x7F800000, 0xFF800000,  # zeros, infinities
                      0x477FE000, 0x477FEFFF, 0x477FF000, 0x477FF001, 0x47800000,  # near 65504
                      0x33000000, 0x33000001, 0x387FC000, 0x387FF000, 0x38800000,  # subnormals
                      0x3F801000, 0x3F803000], np.uint32)  # ties to even
    bits = np.concatenate([edges, rng.integers(0, 2**32, 2_000_000, dtype=np.uint64).astype(np.uint32),
                           rng.standard_normal(200_000).astype(np.float32).view(np.uint32)])
    x = bits.view(np.float32)
    out = np.empty(x.shape, np.uint16)
    round_(x, out)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numpy warns about the overflows it turns into inf
        expected = x.astype(np.float16)
    largest = np.finfo(np.float16).max
    expected[np.isinf(expected)] = np.copysign(largest, expected[np.isinf(expected)])
    assert (expected == largest).sum() > 1000  # (the random bits overflow often)
    nan = np.isnan(x)
    assert np.isnan(out[nan].view(np.float16)).all()
    assert np.array_equal(out[~nan], expected[~nan].view(np.uint16))
