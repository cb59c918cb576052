"""float32 prefill attention (`model/kernels/f32_attention.py`), every way of computing a job (the
plain loops and the register tiles of 8 and 16 lanes, where this CPU runs them) and both ways of
sharing the jobs out:
against `llama_reference.attention` within the bounds of test_kernels_vs_reference.py (grouped
queries, windows, chunks of a longer context, more queries than a job's), each row the same bits
whichever chunk, job or thread computes it (a prompt's tail read back from the prefix cache
relies on it), which way causal_attention takes, and the keys' transposition."""

from __future__ import annotations

import numpy as np
import pytest
from test_kernels_vs_reference import assert_within, attention_bound, f32

from nanovllm.model.architectures import llama_reference as ref
from nanovllm.model.kernels.f32_attention import (
    JOB_ROWS,
    THREADS_MIN_WORK,
    TILE_HEAD_DIMS,
    causal_work,
)
from nanovllm.model.layers.attention import (
    attend_chunk,
    causal_attention,
    heads_first,
    host_tile_lanes,
    keys_transposed,
)

LANES = [0, 8, 16]  # the tiles' (0: the plain loops)


def attend(q, k, v, window, threads, lanes):
    """attend_chunk's output for q, the last positions of the context k, v ([c, Hkv, D], as a
    model makes them), on numba's threads or on the calling thread whatever the work. A CPU
    with 16-lane tiles runs the 8-lane ones too (AVX-512 includes AVX2)."""
    if lanes > host_tile_lanes():
        pytest.skip(f"no register tiles of {lanes} lanes on this CPU (or NUMBA_DISABLE_JIT=1)")
    out = np.full(q.shape, np.nan, np.float32)
    attend_chunk(np.ascontiguousarray(q), keys_transposed(k), heads_first(v), out, window,
                 0 if threads else 2**62, lanes)
    return out


SHAPES = [(1, 1), (1, 300), (5, 5), (JOB_ROWS + 3, JOB_ROWS + 3), (200, 777), (24, 424), (7, 40)]


@pytest.mark.parametrize("lanes", LANES)
@pytest.mark.parametrize("threads", [False, True])
@pytest.mark.parametrize("window", [0, 1, 5, 40])
@pytest.mark.parametrize("n, c", SHAPES)
def test_matches_reference(n, c, window, threads, lanes):
    """6 query heads over 2 key/value heads of 64 dimensions, the last n positions of c."""
    q, k, v = f32(c, 6, 64, seed=1), f32(c, 2, 64, seed=2), f32(c, 2, 64, seed=3)
    expected = ref.attention(q, k, v, window)[c - n:]
    bound = attention_bound(q[c - n:], np.repeat(k, 3, axis=1), np.repeat(v, 3, axis=1), window)
    assert_within(attend(q[c - n:], k, v, window, threads, lanes), expected, bound)


@pytest.mark.parametrize("lanes", LANES)
@pytest.mark.parametrize("d", [*TILE_HEAD_DIMS, 24])
def test_every_head_size(d, lanes):
    """The tiles' head sizes, each a number of vectors of its own, and one they do not take
    (which the plain loops compute)."""
    n, c = 11, 70
    q, k, v = f32(c, 4, d, seed=4), f32(c, 4, d, seed=5), f32(c, 4, d, seed=6)
    expected = ref.attention(q, k, v)[c - n:]
    assert_within(attend(q[c - n:], k, v, 0, False, lanes), expected,
                  attention_bound(q[c - n:], k, v))


@pytest.mark.parametrize("lanes", LANES)
@pytest.mark.parametrize("window", [0, 9])
@pytest.mark.parametrize("d", [16, 64, 128])
def test_a_row_is_the_same_bits_in_any_chunk_job_or_thread(d, window, lanes):
    """The last rows of a prompt attended as a chunk of their own (after a prefix read from the
    cache) are those rows of the whole prompt attended at once, on one thread or on all."""
    c = 2 * JOB_ROWS + 35
    q, k, v = f32(c, 4, d, seed=7), f32(c, 2, d, seed=8), f32(c, 2, d, seed=9)
    whole = attend(q, k, v, window, False, lanes)
    np.testing.assert_array_equal(attend(q, k, v, window, True, lanes), whole)
    for tail in (1, 3, 5, 17, JOB_ROWS + 1):
        np.testing.assert_array_equal(attend(q[c - tail:], k, v, window, False, lanes),
                                      whole[c - tail:])


def test_causal_attention_is_attend_chunk_on_this_cpus_way():
    """Bit for bit attend_chunk's result on this CPU's way (`host_tile_lanes`), with little
    work and with enough for the threads."""
    k, v = f32(424, 12, 64, seed=11), f32(424, 12, 64, seed=12)
    assert causal_work(24, 424, 12, 64, 0) < THREADS_MIN_WORK <= causal_work(96, 424, 12, 64, 0)
    for n in (24, 96):
        q = f32(n, 12, 64, seed=13)
        expected = np.empty_like(q)
        attend_chunk(q, keys_transposed(k), heads_first(v), expected, 0, THREADS_MIN_WORK,
                     host_tile_lanes())
        np.testing.assert_array_equal(causal_attention(q, k, v), expected)


def test_keys_transposed():
    """Each head's keys along its rows, 0 past the last key to a whole vector; from a fused
    projection's columns (a strided view) as from a contiguous array."""
    qkv = f32(37, 3, 2, 8).reshape(37, 3 * 2 * 8)
    k = qkv[:, 16:32].reshape(37, 2, 8)
    for keys in (k, np.ascontiguousarray(k)):
        kt = keys_transposed(keys)
        assert kt.shape == (2, 8, 48)
        np.testing.assert_array_equal(kt[:, :, :37], k.transpose(1, 2, 0))
        assert not kt[:, :, 37:].any()


@pytest.mark.parametrize("n, c, window", [(1, 1, 0), (5, 9, 0), (30, 30, 0), (30, 100, 7),
                                          (4, 4, 10)])
def test_causal_work_counts_each_querys_keys(n, c, window):
    seen = sum(min(window or c, c - n + i + 1) for i in range(n))
    assert causal_work(n, c, 3, 8, window) == 2 * seen * 3 * 8
