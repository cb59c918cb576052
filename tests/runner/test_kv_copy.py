"""KVCache.copy_blocks: the runner's half of copy on write."""

from __future__ import annotations

import numpy as np

from nanovllm.model.architectures.gpt2_config import GPT2Config
from nanovllm.runner.kv_cache import KVCache


def test_copy_blocks_copies_keys_and_values_of_every_layer():
    cfg = GPT2Config(n_layer=2, n_embd=8, n_head=2, vocab_size=16, n_positions=32)
    cache = KVCache(cfg, num_blocks=5, block_size=4)
    rng = np.random.default_rng(0)
    for k, v in cache.layers:
        k[:] = rng.standard_normal(k.shape)
        v[:] = rng.standard_normal(v.shape)
    before = [(k.copy(), v.copy()) for k, v in cache.layers]
    cache.copy_blocks([(1, 3), (3, 4)])  # 4 gets 3's old contents: every src is read first
    for (k, v), (k0, v0) in zip(cache.layers, before):
        for now, old in ((k, k0), (v, v0)):
            assert np.array_equal(now[12:16], old[4:8])
            assert np.array_equal(now[16:20], old[12:16])
            assert np.array_equal(now[:12], old[:12])
