"""The KV cache's pool: zeroed, writable, every page mapped at start-up (`touched_zeros`)."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from nanovllm.model.architectures.gpt2_config import GPT2Config
from nanovllm.runner.kv_cache import KVCache, touched_zeros


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_touched_zeros_is_a_writable_zeroed_array(dtype):
    a = touched_zeros((3, 5, 2, 4), dtype)
    assert a.shape == (3, 5, 2, 4) and a.dtype == dtype and a.flags.c_contiguous
    assert not a.any()
    a[1, 2] = 7
    assert a.sum() == 56 and a[1, 2, 1, 3] == 7


@pytest.mark.skipif(sys.platform != "linux", reason="the pages are mapped by madvise on Linux")
def test_the_pool_is_resident_before_any_write():
    """Every page of every layer's arrays counts in the process's resident memory before a
    step writes one (what `KVCache` is for: a step never pays the first touch)."""
    def resident() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    cfg = GPT2Config(n_layer=2, n_embd=256, n_head=4, vocab_size=16, n_positions=32)
    before = resident()
    cache = KVCache(cfg, num_blocks=512, block_size=16)  # 32 MiB
    assert resident() - before >= 0.9 * cache.nbytes
    for k, v in cache.layers:
        assert not k.any() and not v.any()


def test_an_empty_pool():
    assert touched_zeros((0, 4), np.float32).shape == (0, 4)
