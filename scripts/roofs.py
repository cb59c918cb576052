"""This machine's limits, measured, and how near a benchmark figure comes to them.

- memory bandwidth: a parallel sum over 256 MiB of float32 (far beyond any cache), best of 5;
- float32 peak: multiply-adds per second of OpenBLAS's sgemm on 1536 x 1536 matrices, best of 5
  (what the best float32 code on this CPU reaches, not the data sheet's figure);
- int8 peak: multiply-adds per second of the W8A8 kernel this CPU runs
  (`model/kernels/int8_gemm.py`) on operands that stay in the L1 and L2 caches, best of 5;
- bfloat16 peak, where the CPU runs the avx512bf16 kernel (`model/kernels/bf16_gemm.py`): the same,
  on that kernel (elsewhere bfloat16 is widened to float32 products: float32's peak is its roof);
- block-quantized peak: the same, on 4096 x 1024 Q4_0 weights through the block kernel this CPU
  runs (`model/kernels/block_gemm.py`: int8 codes on VNNI or AVX2, or on AMX's bfloat16 tiles).

A decode step reads every weight matrix once (the LM head included: each architecture's weights
list them, `matrices()`), so at batch 1 the weights
stream at (bytes of the matrices) x (steps per second), and each token costs one multiply-add per
matrix element (attention's products, a few percent at these lengths, are left out).
`nanovllm bench embeddings` holds its texts to float32's roof alone, counting what a text costs
from the model's config (`text_multiply_adds`, attention's products included).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from numba import njit, prange


@dataclass(frozen=True, slots=True)
class Roofs:
    bandwidth: float     # bytes/s
    float32_peak: float  # multiply-adds/s
    int8_peak: float     # multiply-adds/s
    int8_kernel: str
    bf16_peak: float     # multiply-adds/s (float32's where bfloat16 is widened)
    bf16_kernel: str
    block_peak: float    # multiply-adds/s, Q4_0 weights
    block_kernel: str


@njit(cache=True, nogil=True, parallel=True, fastmath=True)
def _sum(a):
    total = np.float32(0.0)
    for i in prange(a.shape[0]):
        total += a[i]
    return total


def _best(fn, reps: int = 5) -> float:
    fn()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _bandwidth() -> float:
    big = np.ones(64 * 2**20, np.float32)
    return big.nbytes / _best(lambda: _sum(big))


def measure_float32_peak() -> float:
    """Multiply-adds a second of OpenBLAS's sgemm (on the BLAS threads numpy has now)."""
    n = 1536
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    return n ** 3 / _best(lambda: a @ a)


def measure_roofs() -> Roofs:
    from nanovllm.model.kernels.bf16_gemm import bf16_matmul
    from nanovllm.model.kernels.block_gemm import block_linear
    from nanovllm.model.kernels.int8_gemm import int8_linear
    from nanovllm.model.layers.linear import (
        host_bf16_kernel,
        host_block_kernel,
        host_int8_kernel,
        host_packs_bfloat16,
    )
    from nanovllm.model.weights.block_quant import from_float
    from nanovllm.model.weights.quant import PackedBF16Weight, quantize_int8, to_bfloat16

    bandwidth = _bandwidth()
    float32_peak = measure_float32_peak()
    x = np.random.default_rng(1).standard_normal((256, 1024), dtype=np.float32)
    w = quantize_int8(np.random.default_rng(2).standard_normal((512, 1024), dtype=np.float32))
    kernel = host_int8_kernel()
    int8_peak = 256 * 1024 * 512 * 8 / _best(
        lambda: [int8_linear(x, w, kernel) for _ in range(8)])
    bf16_kernel = host_bf16_kernel()
    bf16_peak = float32_peak
    if host_packs_bfloat16():
        wb = PackedBF16Weight.from_bits(to_bfloat16(w.rows().astype(np.float32)).bits)
        bf16_peak = 256 * 1024 * 512 * 8 / _best(lambda: [bf16_matmul(x, wb) for _ in range(8)])
    block_kernel = host_block_kernel()
    # More outputs than the int8 peak's (still within L2): each thread's chunks then hold
    # several pairs of panels, as the largest layers give the AMX kernel.
    wq = from_float("Q4_0", np.random.default_rng(3).standard_normal((4096, 1024), np.float32))
    block_peak = 256 * 1024 * 4096 * 2 / _best(
        lambda: [block_linear(x, wq, block_kernel) for _ in range(2)])
    return Roofs(bandwidth, float32_peak, int8_peak, kernel, bf16_peak, bf16_kernel, block_peak,
                 block_kernel)


def step_cost(weights) -> tuple[int, int, int]:
    """(bytes of the weight matrices, multiply-adds per token, of which the LM head's), of any
    architecture: its weights list the matrices a step multiplies by, the LM head first."""
    mats = weights.matrices()
    macs = [m.shape[0] * m.shape[1] for m in mats]
    return sum(m.nbytes for m in mats), sum(macs), macs[0]


def describe(roofs: Roofs) -> str:
    bf16 = (f"bfloat16 {roofs.bf16_peak / 1e9:.1f} G multiply-adds/s ({roofs.bf16_kernel} kernel,"
            " in cache)" if roofs.bf16_kernel != "widen" else "bfloat16 widened: float32's")
    return (f"roofs (measured): memory {roofs.bandwidth / 1e9:.1f} GB/s; "
            f"{describe_float32(roofs.float32_peak)}; int8 "
            f"{roofs.int8_peak / 1e9:.1f} G multiply-adds/s ({roofs.int8_kernel} kernel, in "
            f"cache); {bf16}; block-quantized {roofs.block_peak / 1e9:.1f} G multiply-adds/s "
            f"(Q4_0, {roofs.block_kernel} kernel, in cache)")


def describe_float32(peak: float) -> str:
    return f"float32 {peak / 1e9:.1f} G multiply-adds/s (OpenBLAS sgemm)"
