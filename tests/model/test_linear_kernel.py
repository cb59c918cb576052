"""`linear` (x @ w.T + b) on its paths, the small-batch kernels and BLAS, against float64."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import config

from nanovllm.model.kernels.shared import as_bias
from nanovllm.model.layers.linear import (
    KERNEL_MAX_ROWS,
    PACKED_MAX_ROWS,
    host_packs_float32,
    linear,
    matmul_nt,
    matmul_packed,
)
from nanovllm.model.weights.quant import PackedF32Weight, pack_float32

# The packed kernel is LLVM IR (model/kernels/f32_dot.py): it runs compiled only, on any CPU (LLVM
# splits its 16-lane vectors where they are wider than the CPU's), though only the AVX-512 path
# takes it.
KERNELS = [matmul_nt] + ([] if config.DISABLE_JIT else [matmul_packed])


def reference(x, w, b):
    return x.astype(np.float64) @ w.astype(np.float64).T + b


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, KERNEL_MAX_ROWS + 6), out_dim=st.integers(1, 37),
       in_dim=st.integers(1, 70), strided=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_linear_matches_float64_on_both_paths(rows, out_dim, in_dim, strided, seed):
    """Every shape the kernel's blocking leaves a remainder in (rows not a multiple of 4,
    outputs not a multiple of 3, fewer outputs than chunks), and rows on both sides of the BLAS
    cut-over.
    `strided` passes x as a column slice, as attention's output projection may get it."""
    rng = np.random.default_rng(seed)
    wide = rng.standard_normal((rows, 2 * in_dim), dtype=np.float32)
    x = wide[:, :in_dim] if strided else np.ascontiguousarray(wide[:, :in_dim])
    w = rng.standard_normal((out_dim, in_dim), dtype=np.float32)
    b = rng.standard_normal(out_dim, dtype=np.float32)
    out = linear(x, w, b)
    assert out.dtype == np.float32 and out.shape == (rows, out_dim)
    np.testing.assert_allclose(out, reference(x, w, b), rtol=1e-4, atol=1e-4 * np.sqrt(in_dim))


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, KERNEL_MAX_ROWS + 20), out_dim=st.integers(1, 60),
       in_dim=st.integers(1, 70), read_only=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_dot_product_kernel_matches_float64(rows, out_dim, in_dim, read_only, seed):
    """`matmul_nt` called directly, whichever this CPU's `linear` picks: row counts that leave
    part of a 4-row tile empty; outputs that leave a partial tile; read-only weights (the
    memory-mapped LM head)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, in_dim), dtype=np.float32)
    w = rng.standard_normal((out_dim, in_dim), dtype=np.float32)
    w.flags.writeable = not read_only
    out = np.full((rows, out_dim), np.nan, np.float32)
    matmul_nt(x, w, out)
    np.testing.assert_allclose(out, reference(x, w, 0), rtol=1e-4, atol=1e-4 * np.sqrt(in_dim))


@pytest.mark.skipif(config.DISABLE_JIT, reason="LLVM IR: compiled only")
@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 80), out_dim=st.integers(1, 70), in_dim=st.integers(1, 70),
       read_only=st.booleans(), biased=st.booleans(), accumulate=st.booleans(),
       seed=st.integers(0, 2**32 - 1))
def test_packed_kernel_matches_float64(rows, out_dim, in_dim, read_only, biased, accumulate,
                                       seed):
    """`matmul_packed` called directly, whichever this CPU's loaders pick: row counts that leave
    every remainder tile (8, 4, 2, 1 rows), outputs that leave a partial block of 16 and a
    partial group of blocks, read-only arrays; with and without a bias, stored or added into a
    residual."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, in_dim), dtype=np.float32)
    w = rng.standard_normal((out_dim, in_dim), dtype=np.float32)
    b = rng.standard_normal(out_dim, dtype=np.float32) if biased else None
    residual = rng.standard_normal((rows, out_dim), dtype=np.float32)
    packed = pack_float32(w)
    x.flags.writeable = packed.flags.writeable = not read_only
    out = residual.copy() if accumulate else np.full((rows, out_dim), np.nan, np.float32)
    matmul_packed(x, packed, out, as_bias(b), accumulate)
    expected = reference(x, w, 0 if b is None else b) + (residual if accumulate else 0)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4 * np.sqrt(in_dim))


@pytest.mark.skipif(not host_packs_float32(), reason="float32 weights are packed on the AVX-512 "
                    "path only (compiled)")
@pytest.mark.parametrize("rows", [1, 13, PACKED_MAX_ROWS + 3])
def test_linear_adds_bias_and_residual_as_numpy_would(rows):
    """On packed weights `linear` adds the bias and the residual as the kernel stores its sums:
    the same float32 sums as numpy's `out += b; residual += out` after the plain product."""
    rng = np.random.default_rng(rows)
    x = rng.standard_normal((rows, 1600), dtype=np.float32)  # >= PACKED_CHUNK_MIN_K inputs
    w = PackedF32Weight.from_rows(rng.standard_normal((40, 1600), dtype=np.float32))
    b = rng.standard_normal(40, dtype=np.float32)
    residual = rng.standard_normal((rows, 40), dtype=np.float32)
    plain = linear(x, w)
    expected = residual + (plain + b)
    got = linear(x, w, b, residual)
    assert got is residual
    np.testing.assert_array_equal(got, expected)


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, KERNEL_MAX_ROWS + 20), out_dim=st.integers(1, 40),
       in_dim=st.integers(1, 50), seed=st.integers(0, 2**32 - 1))
def test_linear_on_packed_weights_matches_float64(rows, out_dim, in_dim, seed):
    """A packed matrix through `linear`: the packed kernel up to KERNEL_MAX_ROWS rows (compiled),
    BLAS on the unpacked matrix above (and under NUMBA_DISABLE_JIT=1)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, in_dim), dtype=np.float32)
    w = rng.standard_normal((out_dim, in_dim), dtype=np.float32)
    b = rng.standard_normal(out_dim, dtype=np.float32)
    out = linear(x, PackedF32Weight.from_rows(w), b)
    assert out.dtype == np.float32 and out.shape == (rows, out_dim)
    np.testing.assert_allclose(out, reference(x, w, b), rtol=1e-4, atol=1e-4 * np.sqrt(in_dim))


def test_packed_linear_unpacks_in_chunks_for_blas(monkeypatch):
    """More outputs than one BLAS chunk: every chunk lands in its own columns."""
    from nanovllm.model.layers import linear as linear_module

    monkeypatch.setattr(linear_module, "BLAS_CHUNK", 32)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((KERNEL_MAX_ROWS + 3, 24), dtype=np.float32)
    w = rng.standard_normal((101, 24), dtype=np.float32)
    out = linear(x, PackedF32Weight.from_rows(w))
    np.testing.assert_allclose(out, reference(x, w, 0), rtol=1e-4, atol=1e-4 * np.sqrt(24))


@pytest.mark.parametrize("in_dim", [20, 40])  # BLAS below the long-input cut-over; the kernel
def test_packed_linear_above_the_kernels_rows_by_input_length(monkeypatch, in_dim):
    """More rows than the packed kernel takes at once: matrices with long inputs still go to it,
    a run of rows at a time (every run lands in its own rows), the others to BLAS."""
    from nanovllm.model.layers import linear as linear_module

    monkeypatch.setattr(linear_module, "PACKED_MAX_ROWS", 16)
    monkeypatch.setattr(linear_module, "PACKED_CHUNK_MIN_K", 32)
    rng = np.random.default_rng(in_dim)
    x = rng.standard_normal((16 * 3 + 5, in_dim), dtype=np.float32)
    w = rng.standard_normal((37, in_dim), dtype=np.float32)
    out = linear(x, PackedF32Weight.from_rows(w))
    np.testing.assert_allclose(out, reference(x, w, 0), rtol=1e-4, atol=1e-4 * np.sqrt(in_dim))


def test_kernel_and_blas_agree_at_the_cut_over():
    """The same rows give the same outputs whichever path a batch size takes (to float32
    rounding): a sequence's logits must not depend on how many others share its step."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((KERNEL_MAX_ROWS + 1, 768), dtype=np.float32)
    w = rng.standard_normal((2304, 768), dtype=np.float32) * 0.02
    blas = linear(x, w)
    kernel = linear(x[:KERNEL_MAX_ROWS], w)
    np.testing.assert_allclose(kernel, blas[:KERNEL_MAX_ROWS], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel", KERNELS, ids=lambda k: k.__name__)
def test_kernel_releases_the_gil_so_other_threads_run_meanwhile(kernel):
    """The server's event loop must keep running while the engine thread is in the kernel. A
    long call runs in a thread; this thread counts how often it gets to run meanwhile."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((KERNEL_MAX_ROWS, 4096), dtype=np.float32)
    w = rng.standard_normal((16384, 4096), dtype=np.float32)
    weights = pack_float32(w) if kernel is matmul_packed else w  # (as its loaders store them)
    out = np.empty((x.shape[0], w.shape[0]), np.float32)
    store = (as_bias(None), False) if kernel is matmul_packed else ()  # no bias, no residual
    kernel(x[:1], weights, out[:1], *store)  # compiled before timing anything
    worker = threading.Thread(target=kernel, args=(x, weights, out, *store))
    worker.start()
    turns = 0
    while worker.is_alive():
        turns += 1
        time.sleep(0.001)
    worker.join()
    assert turns >= 5, f"this thread ran only {turns} times during the kernel"
