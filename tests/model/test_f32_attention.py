"""Prefill attention's float32 products on the packed panels (`model/f32_attention.py`): the
whole blocked causal attention against numpy's matmul path (grouped queries, windows, more
queries than CAUSAL_BLOCK, a cached context longer than the queries, every n around the key
blocks' edges), and that float32 prefills take it where this CPU has the panels."""

from __future__ import annotations

import numpy as np
import pytest

from nanovllm.model.attention import CAUSAL_BLOCK, attend_block, causal_attention
from nanovllm.model.f32_attention import F32Context
from nanovllm.model.linear import host_has_panels
from tests.model.test_kernels_vs_reference import f32


def needs_panels():
    if not host_has_panels():
        pytest.skip("no packed float32 panels on this CPU (or NUMBA_DISABLE_JIT=1)")


def blocks(q, k, v, window, context):
    """causal_attention's blocks of queries, each through attend_block with `context`."""
    n, c = q.shape[0], k.shape[0]
    parts = []
    for start in range(0, n, CAUSAL_BLOCK):
        end = min(start + CAUSAL_BLOCK, n)
        first = max(0, c - n + start + 1 - window) if window else 0
        parts.append(attend_block(q[start:end], k, v, first, c - n + end, window, context))
    return np.concatenate(parts)


CASES = [(n, c, w, h, kv, d) for n, c in [(1, 1), (1, 300), (5, 5), (CAUSAL_BLOCK + 1,) * 2,
                                          (300, 300), (200, 777), (24, 424)]
         for w in (0, 1, 5, 40) for h, kv, d in [(6, 2, 16), (3, 3, 64), (4, 1, 128)]]
CASES += [(n, n + 7, 0, 4, 2, 64) for n in range(1, 41)]


@pytest.mark.parametrize("n, c, window, n_head, n_kv, d", CASES)
def test_packed_products_match_matmul(n, c, window, n_head, n_kv, d):
    """The last n positions of a c-token context, within float32 sums' rounding of numpy's
    matmul path."""
    needs_panels()
    q, k, v = f32(n, n_head, d, seed=1), f32(c, n_kv, d, seed=2), f32(c, n_kv, d, seed=3)
    got = causal_attention(q, k, v, window)
    expected = blocks(q, k, v, window, None)
    assert got.dtype == np.float32 and got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=3e-5)


def test_float32_prefill_takes_the_panels_where_the_cpu_has_them():
    """causal_attention's result is the packed context's, bit for bit, where the CPU has the
    panels, and numpy's matmul path's elsewhere."""
    q, k, v = f32(200, 6, 64, seed=4), f32(300, 2, 64, seed=5), f32(300, 2, 64, seed=6)
    context = F32Context.pack(k, v) if host_has_panels() else None
    np.testing.assert_array_equal(causal_attention(q, k, v, 0), blocks(q, k, v, 0, context))
