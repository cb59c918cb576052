"""The prefix cache's disk tier: the block manager's lower tier, over a DiskBlockStore.

The block manager offers it every block the prefix cache publishes (`publish`: a copy of the
block's K/V is queued for the writer) and asks it, on a miss, for the block a prompt needs next
(`find`, then `load` into the free block the block manager took for it). A block read back is the
bytes that were written, so a prompt served from disk computes exactly what it would have.
"""

from __future__ import annotations

import os
from collections import OrderedDict

import numpy as np

from nanovllm.block_manager import HASH_BYTES
from nanovllm.kv_disk.fingerprint import checkpoint_digest, fingerprint
from nanovllm.kv_disk.store import DiskBlockStore, DiskStats
from nanovllm.runner.kv_cache import KVCache

GIB = 1 << 30
QUEUE_BYTES = 256 << 20  # block copies waiting for the writer, at most; more are dropped
KNOWN_KEYS = 1 << 16  # keys remembered as already on disk (not copied again), most recent


class DiskTier:
    def __init__(self, store: DiskBlockStore, kv_cache: KVCache):
        self.store, self.kv_cache = store, kv_cache
        self._known: OrderedDict[int, None] = OrderedDict()  # keys this process wrote or read

    @property
    def stats(self) -> DiskStats:
        return self.store.stats

    def publish(self, block_id: int, key: int, token_ids: tuple[int, ...]) -> None:
        """Queues the block's K/V for the disk, unless it is known to be there already."""
        if self._remember(key):
            return
        self.store.put(_key_bytes(key), token_ids, self._gather(block_id))

    def find(self, key: int, token_ids: tuple[int, ...]) -> bytes | None:
        """The K/V stored for the block `key` holding `token_ids`, or None."""
        payload = self.store.get(_key_bytes(key), token_ids)
        if payload is not None:
            self._remember(key)
        return payload

    def load(self, payload: bytes, block_id: int) -> None:
        """Writes a found block's K/V into block `block_id` of the pool."""
        cache = self.kv_cache
        blocks = np.frombuffer(payload, cache.dtype).reshape(len(cache.layers), 2, cache.block_size,
                                                             *cache.layers[0][0].shape[1:])
        slots = slice(block_id * cache.block_size, (block_id + 1) * cache.block_size)
        for (k, v), (k_block, v_block) in zip(cache.layers, blocks):
            k[slots], v[slots] = k_block, v_block

    def close(self) -> None:
        self.store.close()

    def _gather(self, block_id: int) -> bytes:
        bs = self.kv_cache.block_size
        slots = slice(block_id * bs, (block_id + 1) * bs)  # a block's slots are contiguous
        return b"".join(part[slots].tobytes() for kv in self.kv_cache.layers for part in kv)

    def _remember(self, key: int) -> bool:
        """Marks `key` as on disk; whether it was already."""
        known = key in self._known
        self._known[key] = None
        self._known.move_to_end(key)
        if len(self._known) > KNOWN_KEYS:
            self._known.popitem(last=False)
        return known


def payload_bytes(kv_cache: KVCache) -> int:
    k = kv_cache.layers[0][0]
    return 2 * len(kv_cache.layers) * kv_cache.block_size * k.shape[1] * k.shape[2] * k.itemsize


def open_disk_tier(directory: str, max_gb: float, kv_cache: KVCache, identity: dict
                   ) -> DiskTier:
    """The tier over `directory` for a pool laid out as `kv_cache`, for the model `identity`
    names (its weights and their precision: see `model_identity`). Raises ValueError if the
    directory cannot be used."""
    k = kv_cache.layers[0][0]
    layout = {"kv_dtype": str(k.dtype), "block_size": kv_cache.block_size,
              "num_layers": len(kv_cache.layers), "num_kv_heads": k.shape[1],
              "head_dim": k.shape[2]}
    store = DiskBlockStore(directory, int(max_gb * GIB), fingerprint({**identity, **layout}),
                           QUEUE_BYTES, payload_bytes(kv_cache))
    return DiskTier(store, kv_cache)


def model_identity(directory: str, model_dir: str | os.PathLike, is_generated: bool, seed: int,
                   architecture: str, dtype: str, quantization: str | None, kernels: str) -> dict:
    """What the weights are: the checkpoint's contents (or, for random weights made in
    memory, its config and the seed), their precision and the kernels computing K/V."""
    checkpoint = checkpoint_digest(model_dir, os.path.join(directory, "checkpoints"))
    return {"checkpoint": checkpoint, "random_weights_seed": seed if is_generated else None,
            "architecture": architecture, "dtype": dtype, "quantization": quantization,
            "kernels": kernels}


def _key_bytes(key: int) -> bytes:
    return key.to_bytes(HASH_BYTES, "little")
