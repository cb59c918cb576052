"""The paged KV cache: one key and one value array per layer, indexed by (block, offset).

Arrays are `[num_blocks, block_size, n_head, head_dim]` float32; the model sees each as a flat
`[num_slots, n_head, head_dim]` view, where slot = block * block_size + offset. The whole pool is
allocated and touched once at start-up: first touch of fresh memory is slow on small VMs, and a
step should never pay for it.
"""

from __future__ import annotations

import numpy as np

from model.config import GPT2Config


def kv_bytes_per_block(cfg: GPT2Config, block_size: int) -> int:
    return 2 * cfg.n_layer * block_size * cfg.n_embd * np.dtype(np.float32).itemsize


class KVCache:
    def __init__(self, cfg: GPT2Config, num_blocks: int, block_size: int):
        shape = (num_blocks, block_size, cfg.n_head, cfg.head_dim)
        self.num_blocks, self.block_size = num_blocks, block_size
        self.layers: list[tuple[np.ndarray, np.ndarray]] = []
        for _ in range(cfg.n_layer):
            k, v = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
            k.fill(0.0)  # np.zeros maps untouched pages lazily; fill() faults them in now
            v.fill(0.0)
            flat = (num_blocks * block_size, cfg.n_head, cfg.head_dim)
            self.layers.append((k.reshape(flat), v.reshape(flat)))

    @property
    def nbytes(self) -> int:
        return sum(k.nbytes + v.nbytes for k, v in self.layers)
