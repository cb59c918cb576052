"""Work shared among numba's threads (`model/kernels/parallel.py`): `count_chunks`,
`split_chunks`, `stream_chunks` and `claim`."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import config, get_num_threads, get_thread_id, njit, prange

from nanovllm.model.kernels.parallel import (
    NUM_CHUNKS,
    STREAM_CHUNK_BYTES,
    claim,
    count_chunks,
    split_chunks,
    stream_chunks,
)


@pytest.mark.parametrize("n_blocks", [1, 3, 48, 144, 192, 3142])
@pytest.mark.parametrize("step", [1, 2, 3, 4, 8, 50])
def test_chunks_cover_the_blocks_and_none_is_empty(n_blocks, step):
    """prange shares out chunks evenly, not their work: an empty chunk is an idle thread."""
    chunks = count_chunks(n_blocks, step)
    assert (chunks - 1) * step < n_blocks <= chunks * step


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 100_000), multiple=st.integers(1, 8))
def test_split_chunks_cover_n_in_whole_tiles(n, multiple):
    step, chunks = split_chunks(n, multiple)
    assert step % multiple == 0 and (chunks - 1) * step < n <= chunks * step
    assert chunks <= NUM_CHUNKS


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 100_000), multiple=st.integers(1, 8), parts=st.integers(1, NUM_CHUNKS))
def test_split_chunks_into_parts_cover_n_in_whole_tiles(n, multiple, parts):
    step, chunks = split_chunks(n, multiple, parts)
    assert step % multiple == 0 and (chunks - 1) * step < n <= chunks * step
    assert chunks <= parts


@pytest.mark.parametrize("nbytes", [0, 1, STREAM_CHUNK_BYTES, 3 * STREAM_CHUNK_BYTES + 1,
                                    NUM_CHUNKS * STREAM_CHUNK_BYTES, 10**9])
def test_stream_chunks_are_long_and_keep_both_threads(nbytes):
    """A one-row product's chunks: none under STREAM_CHUNK_BYTES, unless that would leave a
    thread without one; never more than NUM_CHUNKS."""
    chunks = stream_chunks(nbytes)
    assert 2 <= chunks <= NUM_CHUNKS
    assert chunks == 2 or nbytes // chunks >= STREAM_CHUNK_BYTES


@njit(parallel=True, nogil=True)
def claimed_by(chunks, slow_chunk, spins):
    """Which thread did each chunk, and how often each was done, the kernels' way (`claim`);
    chunk `slow_chunk` costs `spins` rounds of arithmetic, the others one round."""
    thread = np.full(chunks, -1, np.intp)
    done = np.zeros(chunks, np.intp)
    sums = np.zeros(chunks)
    taken = np.zeros(1, np.intp)
    for _ in prange(chunks):
        chunk = claim(taken)
        while chunk < chunks:
            s = 0.0
            for i in range(spins if chunk == slow_chunk else 1000):
                s = s * 0.999 + i
            sums[chunk] = s
            thread[chunk] = get_thread_id()
            done[chunk] += 1
            chunk = claim(taken)
    return thread, done, sums


@settings(max_examples=30, deadline=None)
@given(chunks=st.integers(0, 300))
def test_every_chunk_is_claimed_once(chunks):
    _, done, _ = claimed_by(chunks, -1, 0)
    assert done.tolist() == [1] * chunks


def test_claim_as_plain_python_counts_up():
    taken = np.zeros(1, np.intp)
    assert [claim(taken) for _ in range(3)] == [0, 1, 2] and taken[0] == 3


@pytest.mark.skipif(get_num_threads() < 2 or config.DISABLE_JIT, reason="needs two compiled threads")
def test_one_slow_chunk_does_not_hold_back_the_rest():
    """The thread on a chunk costing 2,000x all the others together (a quarter of a second:
    longer than the OS keeps a thread waiting) does no other chunk but the few it claimed
    before the others ran: prange's fixed halves would leave it 31 of them, the other thread
    idle nearly all the time."""
    chunks = 64
    thread, done, _ = claimed_by(chunks, 0, 1000 * chunks * 2000)
    assert done.tolist() == [1] * chunks
    assert (thread == thread[0]).sum() <= 4
