"""Beams share KV blocks: fork, copy on write, prune, preempt, abort, never leaking a block,
never freeing one twice, never letting a sequence see another's writes.

The state machine drives the real BlockManager and keeps a shadow of the KV pool (which token
each slot holds): copies are made and tokens written as the runner would, and after every rule
each live sequence must read its own tokens back through its block table.
"""

from __future__ import annotations

from collections import Counter

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    precondition,
    rule,
)

from nanovllm.block_manager import BlockManager
from nanovllm.sequence import Request, Sequence
from nanovllm.values.sampling_params import SamplingParams

BLOCK_SIZE = 4
NUM_BLOCKS = 24


def new_seq(seq_id: int, tokens: list[int]) -> Sequence:
    request = Request(str(seq_id), None, list(tokens), SamplingParams())
    return Sequence(seq_id, request, 0, list(tokens))


class SharedBlocks(RuleBasedStateMachine):
    seqs = Bundle("seqs")

    def __init__(self):
        super().__init__()
        self.bm = BlockManager(NUM_BLOCKS, BLOCK_SIZE)
        self.slots: dict[int, int] = {}  # the shadow KV pool: slot -> token written there
        self.live: dict[int, Sequence] = {}
        self.next_id = 0

    # ---- what the runner does ----------------------------------------------------------------
    def compute(self, seq: Sequence, n: int) -> None:
        """The step: pending copies first, then the new tokens' K/V into their slots."""
        for src, dst in self.bm.take_copies():
            for off in range(BLOCK_SIZE):
                if src * BLOCK_SIZE + off in self.slots:
                    self.slots[dst * BLOCK_SIZE + off] = self.slots[src * BLOCK_SIZE + off]
        for pos in range(seq.num_computed_tokens, seq.num_computed_tokens + n):
            block = seq.block_table[pos // BLOCK_SIZE]
            self.slots[block * BLOCK_SIZE + pos % BLOCK_SIZE] = seq.token_ids[pos]
        seq.num_computed_tokens += n
        self.bm.register_computed(seq)

    def admit(self, seq: Sequence) -> bool:
        cached = self.bm.match_prefix(seq)
        n = seq.num_tokens - len(cached) * BLOCK_SIZE
        if not self.bm.can_admit(seq, cached, n):
            return False
        self.bm.admit(seq, cached)
        self.bm.append_slots(seq, n)
        self.compute(seq, n)
        self.live[seq.seq_id] = seq
        return True

    # ---- rules -------------------------------------------------------------------------------
    @rule(target=seqs, prompt=st.lists(st.integers(0, 3), min_size=1, max_size=14))
    def add(self, prompt):
        seq = new_seq(self.next_id, prompt)
        self.next_id += 1
        self.admit(seq)  # may not fit: then it waits, holding nothing
        return seq

    @precondition(lambda self: self.live)
    @rule(target=seqs, data=st.data())
    def fork(self, data):
        parent = data.draw(st.sampled_from(sorted(self.live.values(), key=lambda s: s.seq_id)))
        child = new_seq(self.next_id, parent.token_ids)
        self.next_id += 1
        self.bm.share([child], [parent])
        self.live[child.seq_id] = child
        return child

    @precondition(lambda self: len(self.live) >= 2)
    @rule(data=st.data())
    def beam_step(self, data):
        """A beam search step: some beams become forks of some of them (parents may repeat,
        beams no one picks are pruned), all at once."""
        pool = sorted(self.live.values(), key=lambda s: s.seq_id)
        beams = data.draw(st.lists(st.sampled_from(pool), min_size=1, max_size=4, unique=True))
        parents = data.draw(st.lists(st.sampled_from(beams), min_size=len(beams),
                                     max_size=len(beams)))
        tokens = [list(p.token_ids) for p in parents]
        self.bm.share(beams, parents)
        for beam, t in zip(beams, tokens):
            beam.token_ids = t

    @rule(seq=seqs, token=st.integers(0, 3))
    def append_token(self, seq, token):
        """A decode: copies a shared partial block on write; preempts `seq` when nothing is free."""
        if seq.seq_id not in self.live:
            return
        seq.token_ids.append(token)
        if self.bm.can_append(seq, 1):
            self.bm.append_slots(seq, 1)
            self.compute(seq, 1)
        else:
            self.preempt(seq)

    @rule(seq=seqs)
    def preempt(self, seq):
        if seq.seq_id in self.live:
            self.bm.free(self.live.pop(seq.seq_id))

    @rule(seq=seqs)
    def readmit(self, seq):
        if seq.seq_id not in self.live:
            self.admit(seq)

    @rule(seq=consumes(seqs))
    def prune(self, seq):
        """A pruned beam, a finished or aborted sequence: its blocks go at once."""
        if seq.seq_id in self.live:
            self.bm.free(self.live.pop(seq.seq_id))

    # ---- invariants --------------------------------------------------------------------------
    @invariant()
    def reference_counts_are_table_memberships(self):
        owners = Counter(b for s in self.live.values() for b in s.block_table)
        for block in self.bm.blocks:
            assert block.ref_count == owners[block.block_id], f"block {block.block_id}"
            assert (block.block_id in self.bm.free_block_ids) == (block.ref_count == 0)
        assert self.bm.num_free_blocks + len(owners) == NUM_BLOCKS
        assert not self.bm.pending_copies, "a copy was left for no step"

    @invariant()
    def every_sequence_reads_its_own_tokens(self):
        for seq in self.live.values():
            assert len(set(seq.block_table)) == len(seq.block_table)
            for pos in range(seq.num_computed_tokens):
                block = seq.block_table[pos // BLOCK_SIZE]
                assert self.slots.get(block * BLOCK_SIZE + pos % BLOCK_SIZE) == seq.token_ids[pos], \
                    f"seq {seq.seq_id} position {pos}"

    @invariant()
    def only_written_blocks_are_shared_partly_filled(self):
        """A shared block is either full and cached, or the last block of beams that have not
        written past their common prefix yet."""
        owners = Counter(b for s in self.live.values() for b in s.block_table)
        for seq in self.live.values():
            for i, block_id in enumerate(seq.block_table):
                if owners[block_id] > 1 and (i + 1) * BLOCK_SIZE > seq.num_computed_tokens:
                    assert i == len(seq.block_table) - 1


TestSharedBlocks = SharedBlocks.TestCase
TestSharedBlocks.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


def test_fork_then_copy_on_write_by_hand():
    bm = BlockManager(8, 4)
    parent = new_seq(0, [1, 2, 3, 4, 5, 6])  # one full block, one holding 2 tokens
    bm.admit(parent, [])
    bm.append_slots(parent, 6)
    parent.num_computed_tokens = 6
    child = new_seq(1, parent.token_ids)
    bm.share([child], [parent])
    assert child.block_table == parent.block_table
    assert [bm.blocks[b].ref_count for b in parent.block_table] == [2, 2]
    assert bm.num_free_blocks == 6
    child.token_ids.append(9)
    bm.append_slots(child, 1)  # writes position 6, in the shared partial block: copied first
    assert child.block_table[0] == parent.block_table[0]
    assert child.block_table[1] != parent.block_table[1]
    assert bm.take_copies() == [(parent.block_table[1], child.block_table[1])]
    parent.token_ids.append(7)
    bm.append_slots(parent, 1)  # now the only holder: writes in place
    assert bm.take_copies() == [] and bm.num_free_blocks == 5
    bm.free(parent)
    bm.free(child)
    assert bm.num_free_blocks == 8
