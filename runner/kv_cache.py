"""The paged KV cache: one key and one value array per layer, indexed by (block, offset).

Arrays are `[num_blocks, block_size, num_kv_heads, head_dim]` (grouped-query models keep
fewer key/value heads than query heads); the model sees each as a flat
`[num_slots, num_kv_heads, head_dim]` view, where slot = block * block_size + offset. They
are float32 or float16 (`config.kv_cache_dtype_of`: float16 under bfloat16 or block-quantized
weights by default): half the memory, so twice the blocks in the same bytes, and half of what
decode attention reads. The whole pool is allocated and touched once at start-up: first touch of
fresh memory is slow on small VMs, and a step should never pay for it. On Linux the kernel maps
all of an array's pages in one call (`touched_zeros`), several times faster than writing them.
"""

from __future__ import annotations

import mmap
import sys
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # (the registry imports every architecture's kernels: not for a name)
    from nanovllm.model.architectures.registry import ModelConfig

# What a cache can be stored as (the option's "auto" is resolved in `config.kv_cache_dtype_of`).
KV_CACHE_DTYPES = {"float32": np.float32, "float16": np.float16}


def kv_bytes_per_block(cfg: ModelConfig, block_size: int, kv_cache_dtype: str = "float32") -> int:
    itemsize = np.dtype(KV_CACHE_DTYPES[kv_cache_dtype]).itemsize
    return 2 * cfg.n_layer * block_size * cfg.num_kv_heads * cfg.head_dim * itemsize


class KVCache:
    def __init__(self, cfg: ModelConfig, num_blocks: int, block_size: int,
                 kv_cache_dtype: str = "float32"):
        shape = (num_blocks, block_size, cfg.num_kv_heads, cfg.head_dim)
        dtype = KV_CACHE_DTYPES[kv_cache_dtype]
        self.num_blocks, self.block_size = num_blocks, block_size
        self.layers: list[tuple[np.ndarray, np.ndarray]] = []
        for _ in range(cfg.n_layer):
            k, v = touched_zeros(shape, dtype), touched_zeros(shape, dtype)
            flat = (num_blocks * block_size, cfg.num_kv_heads, cfg.head_dim)
            self.layers.append((k.reshape(flat), v.reshape(flat)))

    def copy_blocks(self, copies: list[tuple[int, int]]) -> None:
        """Block dst takes block src's keys and values, for each (src, dst): the scheduler's
        copies on write, made before the step writes anything (so every src is as it was)."""
        if not copies:
            return
        src, dst = (np.array(side, np.int64) for side in zip(*copies))
        for k, v in self.layers:
            for flat in (k, v):
                blocks = flat.reshape(self.num_blocks, self.block_size, *flat.shape[1:])
                blocks[dst] = blocks[src]

    @property
    def dtype(self) -> np.dtype:
        return self.layers[0][0].dtype

    @property
    def nbytes(self) -> int:
        return sum(k.nbytes + v.nbytes for k, v in self.layers)


# madvise(2)'s "map every page of the range writable now" (Linux 5.14; Python names it from 3.13).
MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)


def touched_zeros(shape: tuple[int, ...], dtype) -> np.ndarray:
    """np.zeros(shape, dtype) with every page mapped already. np.zeros maps untouched pages
    lazily, one fault each on first write; on Linux the kernel maps them all in one call
    (MADV_POPULATE_WRITE, which writes nothing), elsewhere fill() faults them in one by one."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if sys.platform == "linux" and nbytes:
        pages = mmap.mmap(-1, nbytes)  # anonymous memory: zeros
        try:
            pages.madvise(MADV_POPULATE_WRITE)
            return np.frombuffer(pages, dtype).reshape(shape)
        except OSError:  # a kernel before 5.14
            pages.close()
    array = np.zeros(shape, dtype)
    array.fill(0)
    return array
