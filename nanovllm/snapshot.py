"""The engine at one moment between two steps, as plain values: what the web page's engine view
draws (the KV block pool, the running and waiting queues, the recent steps).

`take_snapshot` reads the scheduler and the block manager directly, so it must run on the
thread that steps the engine (AsyncEngine calls it there, between steps, when someone asked).
It copies compact arrays, one entry per block, and one short record per listed sequence:
nothing that grows with the tokens in the cache, so it costs a small fraction of a step.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING

from nanovllm.stats import StepStats

if TYPE_CHECKING:
    from nanovllm.block_manager import BlockManager
    from nanovllm.scheduler import Scheduler
    from nanovllm.sequence import Sequence

# Each queue lists at most this many sequences (its head); its length is always given whole.
MAX_LISTED_SEQS = 256


@dataclass(slots=True)
class SeqView:
    """One sequence's progress: its prompt computed in chunks, then its tokens generated; or
    (a pooled text) its tokens computed whole in one step, then pooled."""

    seq_id: int                 # the id the block pool's `owner` refers to
    request_id: str
    index: int                  # which of the request's n samples
    kind: str                   # "generate", or a pooled text's task: "embed" or "score"
    num_prompt_tokens: int
    num_computed_tokens: int    # tokens whose K/V are in the cache (prompt first, then output)
    num_cached_tokens: int      # of the prompt, found in the prefix cache rather than computed
    num_output_tokens: int
    max_tokens: int | None      # None: up to the context length
    num_blocks: int
    num_preemptions: int        # times its blocks were taken back and its tokens recomputed
    adapter_id: int = 0         # the LoRA adapter it runs through (0: the base model)


@dataclass(slots=True)
class BlockPool:
    """The KV blocks, one entry per block id in each list."""

    block_size: int
    owner: list[int]      # seq id of the oldest running sequence holding the block; -1: free
    ref_count: list[int]  # sequences holding it; 2 or more: shared through the prefix cache
    cached: list[bool]    # findable in the prefix cache; a free cached block is reused as is
    beams: list[bool]     # held by two or more beams of one beam search (forked, not copied)
    copied: list[bool]    # a copy, made when a beam was about to write into a shared block
    loaded: list[bool]    # its K/V was read from the prefix cache directory


@dataclass(slots=True)
class EngineSnapshot:
    num_steps: int                 # steps taken so far; `steps[-1]` is the last of them
    blocks: BlockPool
    running: list[SeqView]         # admission order
    waiting: list[SeqView]         # queue order: the next admitted first
    num_running: int               # sequences (a request with n samples has n)
    num_waiting: int
    num_preemptions_total: int
    max_num_seqs: int
    max_num_batched_tokens: int
    steps: list[StepStats]         # the most recent steps, oldest first

    def to_dict(self) -> dict:
        """JSON-ready, without dataclasses.asdict's deep copy of every list."""
        fields = {name: getattr(self, name) for name in self.__slots__}
        blocks = self.blocks
        fields["blocks"] = {"block_size": blocks.block_size, "owner": blocks.owner,
                            "ref_count": blocks.ref_count, "cached": blocks.cached,
                            "beams": blocks.beams, "copied": blocks.copied,
                            "loaded": blocks.loaded}
        for queue in ("running", "waiting"):
            fields[queue] = [_record(s) for s in fields[queue]]
        fields["steps"] = [_record(s) for s in self.steps]
        return fields


def _record(value) -> dict:
    return {name: getattr(value, name) for name in value.__slots__}


def take_snapshot(scheduler: Scheduler, steps: list[StepStats], num_steps: int) -> EngineSnapshot:
    """The engine's state now; call it only from the thread that steps the engine."""
    bm = scheduler.block_manager
    running, waiting = scheduler.running, scheduler.waiting
    return EngineSnapshot(
        num_steps=num_steps, blocks=pool_of(bm, running),
        running=[_seq_view(s) for s in running[:MAX_LISTED_SEQS]],
        waiting=[_seq_view(s) for s in islice(waiting, MAX_LISTED_SEQS)],
        num_running=len(running), num_waiting=len(waiting),
        num_preemptions_total=scheduler.num_preemptions, max_num_seqs=scheduler.max_num_seqs,
        max_num_batched_tokens=scheduler.max_num_batched_tokens, steps=steps)


def pool_of(bm: BlockManager, running: list[Sequence]) -> BlockPool:
    """Each block's holder, reference count, whether the prefix cache can find it, whether
    beams of one search share it, whether it was copied on write and whether it was read
    from disk."""
    owner, beams = [-1] * bm.num_blocks, [False] * bm.num_blocks
    held_by_beams: set[tuple[int, str]] = set()  # (block id, beam search's request id)
    for seq in reversed(running):  # waiting sequences hold no blocks; the oldest holder wins
        for block_id in seq.block_table:
            owner[block_id] = seq.seq_id
            if seq.request.group is not None:
                key = (block_id, seq.request.request_id)
                beams[block_id] |= key in held_by_beams
                held_by_beams.add(key)
    cached = [False] * bm.num_blocks
    for block_id in bm.hash_to_block_id.values():
        cached[block_id] = True
    return BlockPool(bm.block_size, owner, [b.ref_count for b in bm.blocks], cached, beams,
                     [b.copied and b.ref_count > 0 for b in bm.blocks],
                     [b.loaded for b in bm.blocks])


def _seq_view(seq: Sequence) -> SeqView:
    return SeqView(seq.seq_id, seq.request.request_id, seq.index, kind_of(seq),
                   seq.num_prompt_tokens,
                   seq.num_computed_tokens, seq.num_cached_tokens, seq.num_output_tokens,
                   seq.params.max_tokens, len(seq.block_table), seq.num_preemptions,
                   seq.request.adapter_id)


def kind_of(seq: Sequence) -> str:
    """What a sequence is for: generating text, or (a prefill-only sequence computed whole in
    one step, keeping no KV) a pooled result, by its task."""
    return "generate" if seq.request.pooling is None else seq.request.pooling.task
