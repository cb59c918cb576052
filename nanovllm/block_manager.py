"""Owns the paged KV cache's blocks: allocation, reference counts and prefix caching.

Every full block is identified by a hash chained over all tokens up to its end, registered only
once its K/V has been computed. A new sequence reuses each cached full block of its prompt (but
always computes at least its last token, whose logits it needs). Freed blocks keep their hash
and stay findable until a block is actually needed: then the least recently freed one is evicted.
The block manager only does the bookkeeping; the K/V arrays live in the model runner.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence as Seq
from dataclasses import dataclass

from nanovllm.sequence import Sequence


@dataclass(slots=True)
class Block:
    block_id: int
    ref_count: int = 0
    hash: int | None = None
    token_ids: tuple[int, ...] = ()


def chain_hash(token_ids: Seq[int], prefix_hash: int | None) -> int:
    return hash((prefix_hash, tuple(token_ids)))


def blocks_needed(num_tokens: int, block_size: int) -> int:
    """Blocks that hold `num_tokens` tokens (the last one possibly partly filled)."""
    return -(-num_tokens // block_size)


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        # Free blocks in the order they were freed; the front is evicted first.
        self.free_block_ids: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self.hash_to_block_id: dict[int, int] = {}

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_block_ids)

    def blocks_for(self, num_tokens: int) -> int:
        return blocks_needed(num_tokens, self.block_size)

    def match_prefix(self, seq: Sequence) -> list[int]:
        """Ids of the cached blocks that hold a prefix of `seq`'s tokens (all but its last token)."""
        if not self.enable_prefix_caching:
            return []
        bs, h, matched = self.block_size, None, []
        for i in range((seq.num_tokens - 1) // bs):
            tokens = tuple(seq.token_ids[i * bs:(i + 1) * bs])
            h = chain_hash(tokens, h)
            block_id = self.hash_to_block_id.get(h)
            if block_id is None or self.blocks[block_id].token_ids != tokens:
                break
            matched.append(block_id)
        return matched

    def can_admit(self, seq: Sequence, cached: list[int], num_new_tokens: int) -> bool:
        """Whether `seq` can take its cached prefix plus blocks for `num_new_tokens` more tokens."""
        needed = self.blocks_for(len(cached) * self.block_size + num_new_tokens) - len(cached)
        cached_but_free = sum(self.blocks[b].ref_count == 0 for b in cached)
        return needed <= self.num_free_blocks - cached_but_free

    def admit(self, seq: Sequence, cached: list[int]) -> None:
        for block_id in cached:
            block = self.blocks[block_id]
            if block.ref_count == 0:
                del self.free_block_ids[block_id]
            block.ref_count += 1
            seq.block_table.append(block_id)
        seq.num_computed_tokens = seq.num_cached_tokens = len(cached) * self.block_size
        seq.num_hashed_blocks = len(cached)

    def can_append(self, seq: Sequence, num_new_tokens: int) -> bool:
        return self._blocks_missing(seq, num_new_tokens) <= self.num_free_blocks

    def append_slots(self, seq: Sequence, num_new_tokens: int) -> None:
        """Gives `seq` enough blocks to hold `num_new_tokens` more computed tokens."""
        for _ in range(self._blocks_missing(seq, num_new_tokens)):
            seq.block_table.append(self._take_free_block())

    def register_computed(self, seq: Sequence) -> None:
        """Publishes the blocks that became full and computed, so later prompts can reuse them."""
        if not self.enable_prefix_caching:
            return
        bs, table = self.block_size, seq.block_table
        for i in range(seq.num_hashed_blocks, seq.num_computed_tokens // bs):
            tokens = tuple(seq.token_ids[i * bs:(i + 1) * bs])
            prefix_hash = self.blocks[table[i - 1]].hash if i else None
            block = self.blocks[table[i]]
            block.hash, block.token_ids = chain_hash(tokens, prefix_hash), tokens
            self.hash_to_block_id.setdefault(block.hash, block.block_id)
            seq.num_hashed_blocks = i + 1

    def free(self, seq: Sequence) -> None:
        # Tail first, so that a freed chain is evicted from its end and its prefix survives longest.
        for block_id in reversed(seq.block_table):
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                self.free_block_ids[block_id] = None
        seq.block_table.clear()
        seq.num_computed_tokens = seq.num_hashed_blocks = 0  # num_cached_tokens stays: reported
        seq.num_draft_computed = 0  # a draft model's cache lived in these blocks too

    def trim(self, seq: Sequence) -> None:
        """Frees the blocks past the sequence's tokens (they held only rejected proposals)."""
        keep = max(self.blocks_for(seq.num_tokens), seq.num_hashed_blocks)
        while len(seq.block_table) > keep:
            block_id = seq.block_table.pop()
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                self.free_block_ids[block_id] = None

    def _blocks_missing(self, seq: Sequence, num_new_tokens: int) -> int:
        return max(0, self.blocks_for(seq.num_computed_tokens + num_new_tokens) - len(seq.block_table))

    def _take_free_block(self) -> int:
        block_id, _ = self.free_block_ids.popitem(last=False)
        block = self.blocks[block_id]
        if block.hash is not None and self.hash_to_block_id.get(block.hash) == block_id:
            del self.hash_to_block_id[block.hash]  # evict: its contents are about to be overwritten
        block.hash, block.token_ids, block.ref_count = None, (), 1
        return block_id
