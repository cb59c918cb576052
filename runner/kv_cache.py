"""The paged KV cache: one key and one value array per layer, indexed by (block, offset).

Arrays are `[num_blocks, block_size, num_kv_heads, head_dim]` (grouped-query models keep
fewer key/value heads than query heads); the model sees each as a flat
`[num_slots, num_kv_heads, head_dim]` view, where slot = block * block_size + offset. They are float32
by default, or float16 (`kv_cache_dtype`): half the memory, so twice the blocks in the same
bytes, and half of what decode attention reads. The whole pool is allocated and touched once at
start-up: first touch of fresh memory is slow on small VMs, and a step should never pay for it.
"""

from __future__ import annotations

import numpy as np

from nanovllm.model.architectures import ModelConfig

# `auto` is the model's compute dtype, as in vLLM.
KV_CACHE_DTYPES = {"auto": np.float32, "float32": np.float32, "float16": np.float16}


def kv_bytes_per_block(cfg: ModelConfig, block_size: int, kv_cache_dtype: str = "auto") -> int:
    itemsize = np.dtype(KV_CACHE_DTYPES[kv_cache_dtype]).itemsize
    return 2 * cfg.n_layer * block_size * cfg.num_kv_heads * cfg.head_dim * itemsize


class KVCache:
    def __init__(self, cfg: ModelConfig, num_blocks: int, block_size: int,
                 kv_cache_dtype: str = "auto"):
        shape = (num_blocks, block_size, cfg.num_kv_heads, cfg.head_dim)
        dtype = KV_CACHE_DTYPES[kv_cache_dtype]
        self.num_blocks, self.block_size = num_blocks, block_size
        self.layers: list[tuple[np.ndarray, np.ndarray]] = []
        for _ in range(cfg.n_layer):
            k, v = np.zeros(shape, dtype), np.zeros(shape, dtype)
            k.fill(0.0)  # np.zeros maps untouched pages lazily; fill() faults them in now
            v.fill(0.0)
            flat = (num_blocks * block_size, cfg.num_kv_heads, cfg.head_dim)
            self.layers.append((k.reshape(flat), v.reshape(flat)))

    @property
    def dtype(self) -> np.dtype:
        return self.layers[0][0].dtype

    @property
    def nbytes(self) -> int:
        return sum(k.nbytes + v.nbytes for k, v in self.layers)
