"""Owns the paged KV cache's blocks: allocation, reference counts and prefix caching.

Every full block is identified by a hash chained over all tokens up to its end, registered only
once its K/V has been computed. A new sequence reuses each cached full block of its prompt (but
always computes at least its last token, whose logits it needs). Freed blocks keep their hash
and stay findable until a block is actually needed: then the least recently freed one is evicted.

Three operations serve whatever runs on top (none knows why it is asked):
- `share`: sequences take other sequences' tables, every block gaining a reference, the partly
  filled last one included. Before a sequence writes into a shared block, that block is copied
  (copy on write): the sequence gets a fresh block, and the copy (source, destination) waits in
  `pending_copies` for the runner to make before the step's writes.
- `append_slots(seq, n)` reserves slots past the tokens a step computes (lookahead), and
  `trim` frees the blocks past a sequence's tokens once the step said how many it kept.
- `commit` counts a step's computed tokens and publishes the blocks they filled.
A slower cache may sit beneath this one (`LowerTier`, e.g. the disk): it is offered every block
published, and asked for the next block of a prompt on a miss; a block it fills is cached here
like any other. The block manager only does the bookkeeping, and is the only writer of a
sequence's KV state (its block table and its computed, cached and hashed counts); the K/V
arrays live in the model runner (and the lower tier reads and writes them there).
"""

from __future__ import annotations

import hashlib
import struct
from collections import OrderedDict
from collections.abc import Sequence as Seq
from dataclasses import dataclass
from typing import Protocol

from nanovllm.sequence import Sequence


@dataclass(slots=True)
class Block:
    block_id: int
    ref_count: int = 0
    hash: int | None = None
    token_ids: tuple[int, ...] = ()
    copied: bool = False  # its K/V was copied on write from a block another sequence holds
    loaded: bool = False  # its K/V was read from the lower tier (for the engine view)


class LowerTier(Protocol):
    stats: object  # its counters, which EngineStats carries to /metrics

    def publish(self, block_id: int, key: int, token_ids: tuple[int, ...]) -> None:
        """Block `block_id`, just computed and published as `key`, is offered to the tier."""

    def find(self, key: int, token_ids: tuple[int, ...]) -> object | None:
        """What the tier holds for the block `key` of `token_ids`, or None."""

    def load(self, found: object, block_id: int) -> None:
        """Writes what `find` found into block `block_id`'s K/V."""


HASH_BYTES = 16  # a block key's size: 128 bits make a collision between two prefixes implausible


def chain_hash(token_ids: Seq[int], prefix_hash: int | None, extra_key: int = 0) -> int:
    """The key of a block holding `token_ids` after the prefix keyed `prefix_hash` (None: the
    first block). Built from bytes alone, so every process, on every run, computes the same key
    (Python's own `hash` of None or a str changes from run to run). `extra_key` (vLLM's
    extra_keys: the sequence's adapter id) is whatever else makes the K/V differ for the same
    tokens; 0 leaves the key as it was."""
    parent = (prefix_hash or 0).to_bytes(HASH_BYTES, "little")
    tokens = struct.pack(f"<{len(token_ids)}q", *token_ids)
    extra = struct.pack("<q", extra_key) if extra_key else b""
    digest = hashlib.blake2b(parent + tokens + extra, digest_size=HASH_BYTES).digest()
    return int.from_bytes(digest, "little")


def blocks_needed(num_tokens: int, block_size: int) -> int:
    """Blocks that hold `num_tokens` tokens (the last one possibly partly filled)."""
    return -(-num_tokens // block_size)


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True,
                 lower_tier: LowerTier | None = None):
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.lower_tier = lower_tier
        self.blocks = [Block(i) for i in range(num_blocks)]
        # Free blocks in the order they were freed; the front is evicted first.
        self.free_block_ids: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self.hash_to_block_id: dict[int, int] = {}
        self.pending_copies: list[tuple[int, int]] = []  # (src, dst) KV copies for the next step
        self.num_copies_total = 0  # blocks copied on write, ever

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_block_ids)

    def blocks_for(self, num_tokens: int) -> int:
        return blocks_needed(num_tokens, self.block_size)

    def match_prefix(self, seq: Sequence) -> list[int]:
        """Ids of the cached blocks that hold a prefix of `seq`'s tokens (all but its last token);
        past the last one cached here, those the lower tier has, loaded into free blocks."""
        if not self.enable_prefix_caching:
            return []
        bs, h, matched = self.block_size, None, []
        # An adapter id means something to this engine only: its blocks stay out of the lower
        # tier, which other engines share and which outlives this one.
        lower = seq.request.adapter_id == 0
        for i in range((seq.num_tokens - 1) // bs):
            tokens = tuple(seq.token_ids[i * bs:(i + 1) * bs])
            h = chain_hash(tokens, h, seq.request.adapter_id)
            block_id = self.hash_to_block_id.get(h)
            if block_id is None or self.blocks[block_id].token_ids != tokens:
                block_id = self._load_from_lower_tier(h, tokens, matched) if lower else None
                if block_id is None:
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
        return (self._blocks_missing(seq, num_new_tokens)
                + len(self._shared_in_write(seq, num_new_tokens)) <= self.num_free_blocks)

    def append_slots(self, seq: Sequence, num_new_tokens: int) -> None:
        """Gives `seq` enough blocks of its own to hold `num_new_tokens` more computed tokens:
        the shared ones they would be written into are copied first."""
        for i in self._shared_in_write(seq, num_new_tokens):
            src = seq.block_table[i]
            self.blocks[src].ref_count -= 1  # still held by another: never 0 here
            seq.block_table[i] = dst = self._take_free_block()
            self.blocks[dst].copied = True
            self.pending_copies.append((src, dst))
            self.num_copies_total += 1
        for _ in range(self._blocks_missing(seq, num_new_tokens)):
            seq.block_table.append(self._take_free_block())

    def share(self, seqs: list[Sequence], sources: list[Sequence]) -> None:
        """Each `seqs[i]` takes `sources[i]`'s blocks and computed tokens (its own are dropped),
        all at once (the sources may be among `seqs`): the shared blocks gain their references
        before the old ones are dropped, so what someone still shares survives and what only
        the dropped tables held is freed now. Writes into a shared block copy it first."""
        taken = [(list(s.block_table), s.num_computed_tokens, s.num_hashed_blocks) for s in sources]
        for table, _, _ in taken:
            for block_id in table:
                self.blocks[block_id].ref_count += 1
        for seq in seqs:
            self._release(seq.block_table)
        for seq, (table, computed, hashed) in zip(seqs, taken):
            seq.block_table, seq.num_computed_tokens, seq.num_hashed_blocks = table, computed, hashed

    def take_copies(self) -> list[tuple[int, int]]:
        """The copies the next step must make before it writes, handed over once."""
        copies, self.pending_copies = self.pending_copies, []
        return copies

    def commit(self, seq: Sequence, num_tokens: int) -> None:
        """`num_tokens` more of `seq`'s tokens have their K/V in the cache."""
        seq.num_computed_tokens += num_tokens
        self.register_computed(seq)

    def register_computed(self, seq: Sequence) -> None:
        """Publishes the blocks that became full and computed, so later prompts can reuse them
        (only blocks whose tokens the sequence already holds: a kept lookahead token is
        published once it is appended)."""
        if not self.enable_prefix_caching:
            return
        bs, table = self.block_size, seq.block_table
        for i in range(seq.num_hashed_blocks, min(seq.num_computed_tokens, seq.num_tokens) // bs):
            tokens = tuple(seq.token_ids[i * bs:(i + 1) * bs])
            prefix_hash = self.blocks[table[i - 1]].hash if i else None
            block = self.blocks[table[i]]
            block.hash, block.token_ids = chain_hash(tokens, prefix_hash,
                                                     seq.request.adapter_id), tokens
            published = self.hash_to_block_id.setdefault(block.hash, block.block_id)
            if (self.lower_tier is not None and published == block.block_id
                    and not seq.request.adapter_id):  # (see match_prefix)
                self.lower_tier.publish(block.block_id, block.hash, tokens)
            seq.num_hashed_blocks = i + 1

    def free(self, seq: Sequence) -> None:
        self.register_computed(seq)  # what it computed stays findable
        self._release(seq.block_table)
        seq.block_table.clear()
        seq.num_computed_tokens = seq.num_hashed_blocks = 0  # num_cached_tokens stays: reported

    def trim(self, seq: Sequence, num_tokens: int) -> None:
        """Frees the blocks past the first `num_tokens` tokens (slots reserved and not kept)."""
        keep = max(self.blocks_for(num_tokens), seq.num_hashed_blocks)
        while len(seq.block_table) > keep:
            block_id = seq.block_table.pop()
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                self.free_block_ids[block_id] = None

    def _release(self, table: list[int]) -> None:
        # Tail first, so that a freed chain is evicted from its end and its prefix survives longest.
        for block_id in reversed(table):
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                self.free_block_ids[block_id] = None

    def _shared_in_write(self, seq: Sequence, num_new_tokens: int) -> list[int]:
        """Indices of the blocks in `seq`'s table that the next tokens go into and that another
        sequence also holds (in practice, the partly filled last block of a shared table)."""
        bs, table = self.block_size, seq.block_table
        first = seq.num_computed_tokens // bs
        last = min(len(table), self.blocks_for(seq.num_computed_tokens + num_new_tokens))
        return [i for i in range(first, last) if self.blocks[table[i]].ref_count > 1]

    def _blocks_missing(self, seq: Sequence, num_new_tokens: int) -> int:
        return max(0, self.blocks_for(seq.num_computed_tokens + num_new_tokens) - len(seq.block_table))

    def _take_free_block(self, block_id: int | None = None) -> int:
        """Takes `block_id`, by default the least recently freed block, evicting its contents."""
        if block_id is None:
            block_id, _ = self.free_block_ids.popitem(last=False)
        else:
            del self.free_block_ids[block_id]
        block = self.blocks[block_id]
        if block.hash is not None and self.hash_to_block_id.get(block.hash) == block_id:
            del self.hash_to_block_id[block.hash]  # evict: its contents are about to be overwritten
        block.hash, block.token_ids, block.ref_count, block.copied = None, (), 1, False
        block.loaded = False
        return block_id

    def _load_from_lower_tier(self, key: int, tokens: tuple[int, ...], matched: list[int]
                              ) -> int | None:
        """A free block holding the lower tier's copy of block `key`, cached here (still free,
        the most recently freed), or None. The free block taken is never one of `matched`."""
        if self.lower_tier is None:
            return None
        keep = set(matched)
        block_id = next((b for b in self.free_block_ids if b not in keep), None)
        if block_id is None:
            return None
        found = self.lower_tier.find(key, tokens)
        if found is None:
            return None
        self._take_free_block(block_id)
        self.lower_tier.load(found, block_id)
        block = self.blocks[block_id]
        block.hash, block.token_ids, block.ref_count, block.loaded = key, tokens, 0, True
        self.hash_to_block_id[key] = block_id
        self.free_block_ids[block_id] = None
        return block_id
