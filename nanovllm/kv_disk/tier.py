"""The prefix cache's disk tier: the block manager's lower tier, over a DiskBlockStore.

The block manager offers it every block the prefix cache publishes (`publish`: a copy of the
block's K/V is queued for the writer) and asks it, on a miss, for the block a prompt needs next
(`find`, then `load` into the free block the block manager took for it). A block read back is the
bytes that were written, so a prompt served from disk computes exactly what it would have.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict

import numpy as np

from nanovllm.block_manager import HASH_BYTES
from nanovllm.config import EngineConfig
from nanovllm.kv_disk.fingerprint import checkpoint_digest, fingerprint
from nanovllm.kv_disk.store import DiskBlockStore, DiskStats
from nanovllm.model.platform.cpu import kernel_path
from nanovllm.model_loading import LoadedModel
from nanovllm.runner.kv_cache import KVCache

logger = logging.getLogger("nanovllm")

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
        if key in self._known:
            self._remember(key)
            return
        if self.store.put(_key_bytes(key), token_ids, memoryview(self._gather(block_id))):
            self._remember(key)

    def find(self, key: int, token_ids: tuple[int, ...]) -> memoryview | None:
        """The K/V stored for the block `key` holding `token_ids`, or None."""
        payload = self.store.get(_key_bytes(key), token_ids)
        if payload is None:
            self._known.pop(key, None)  # evicted (or bad) since: written again once computed
        else:
            self._remember(key)
        return payload

    def load(self, payload: memoryview, block_id: int) -> None:
        """Writes a found block's K/V into block `block_id` of the pool."""
        cache = self.kv_cache
        blocks = np.frombuffer(payload, cache.dtype).reshape(len(cache.layers), 2, cache.block_size,
                                                             *cache.layers[0][0].shape[1:])
        slots = slice(block_id * cache.block_size, (block_id + 1) * cache.block_size)
        for (k, v), (k_block, v_block) in zip(cache.layers, blocks):
            k[slots], v[slots] = k_block, v_block

    def close(self) -> None:
        self.store.close()

    def _gather(self, block_id: int) -> np.ndarray:
        """A copy of the block's K/V: [layers, 2, block size, key/value heads, head size]."""
        cache = self.kv_cache
        bs = cache.block_size
        slots = slice(block_id * bs, (block_id + 1) * bs)  # a block's slots are contiguous
        out = np.empty((len(cache.layers), 2, bs, *cache.layers[0][0].shape[1:]), cache.dtype)
        for layer, (k, v) in zip(out, cache.layers):
            layer[0], layer[1] = k[slots], v[slots]
        return out

    def _remember(self, key: int) -> None:
        """Marks `key` as on disk (or on its way there), the most recently seen."""
        self._known[key] = None
        self._known.move_to_end(key)
        if len(self._known) > KNOWN_KEYS:
            self._known.popitem(last=False)


def payload_bytes(kv_cache: KVCache) -> int:
    k = kv_cache.layers[0][0]
    return 2 * len(kv_cache.layers) * kv_cache.block_size * k.shape[1] * k.shape[2] * k.itemsize


def open_disk_tier(directory: str, max_gb: float, kv_cache: KVCache, identity: dict
                   ) -> DiskTier:
    """The tier over `directory` for a pool laid out as `kv_cache`, for the model `identity`
    names (its weights and their precision: see `disk_tier_for`). Raises ValueError if the
    directory cannot be used."""
    k = kv_cache.layers[0][0]
    layout = {"kv_dtype": str(k.dtype), "block_size": kv_cache.block_size,
              "num_layers": len(kv_cache.layers), "num_kv_heads": k.shape[1],
              "head_dim": k.shape[2]}
    store = DiskBlockStore(directory, int(max_gb * GIB), fingerprint({**identity, **layout}),
                           QUEUE_BYTES, payload_bytes(kv_cache))
    return DiskTier(store, kv_cache)


def disk_tier_for(config: EngineConfig, loaded: LoadedModel, kv_cache: KVCache
                  ) -> DiskTier | None:
    """The tier `config.prefix_cache_dir` names (None if it names none), for the model
    `loaded` and its pool."""
    directory = config.prefix_cache_dir
    if directory is None:
        return None
    path = kernel_path()
    identity = {
        # The weights: the checkpoint's contents; dummy weights may also come from the seed.
        "checkpoint": checkpoint_digest(loaded.path, os.path.join(directory, "checkpoints")),
        "random_weights_seed": config.seed if config.load_format == "dummy" else None,
        "architecture": loaded.architecture, "dtype": config.dtype,
        "quantization": config.quantization,
        # Another kernel path may round differently: its blocks would not be bit-for-bit ours.
        "kernels": [path.name, path.int8]}
    tier = open_disk_tier(directory, config.prefix_cache_dir_max_gb, kv_cache, identity)
    logger.info("prefix cache directory: %s (at most %g GiB), this model's blocks in %s/",
                directory, config.prefix_cache_dir_max_gb, tier.store.folder.name)
    return tier


def _key_bytes(key: int) -> bytes:
    return key.to_bytes(HASH_BYTES, "little")
