"""Continuous batching: decides, every step, which sequences compute how many tokens.

Each step first serves the running sequences, oldest first (a decode is one token; a prompt
still being prefilled gets the next chunk), then admits waiting sequences first come, first
served while the token budget, the sequence cap and free KV blocks allow. Long prompts are
split into chunks, so one long prompt never stalls everyone's decoding. When blocks run out,
the most recently admitted sequence is preempted: its blocks are freed and it is recomputed
later (its finished prefix blocks usually survive in the prefix cache).

Each batch also carries the step for the model runner as plain values (runner/batch.py): the
scheduled sequences by seq id, the sequences added and those retired since the last step.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from nanovllm.block_manager import BlockManager
from nanovllm.runner.batch import NewSequence, ScheduledSequence, SchedulerOutput
from nanovllm.sequence import Sequence, SequenceStatus


@dataclass(slots=True)
class ScheduledBatch:
    seqs: list[Sequence]              # the engine's view of the step
    for_runner: SchedulerOutput       # the runner's: the same step as plain values
    num_new_tokens: list[int] = field(default_factory=list)  # tokens each sequence computes
    num_tokens: int = 0

    def add(self, seq: Sequence, num_new_tokens: int) -> None:
        self.seqs.append(seq)
        self.num_new_tokens.append(num_new_tokens)
        self.num_tokens += num_new_tokens
        self.for_runner.scheduled.append(ScheduledSequence(
            seq.seq_id, seq.block_table, seq.num_computed_tokens, num_new_tokens))


class Scheduler:
    def __init__(self, block_manager: BlockManager, max_num_seqs: int, max_num_batched_tokens: int):
        self.block_manager = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []      # in admission order
        self.num_preemptions = 0
        self.prefix_cache_queries = 0          # prompt tokens looked up in the prefix cache
        self.prefix_cache_hits = 0             # of those, found
        self._new_seqs: list[NewSequence] = []     # for the runner, in the next batch
        self._finished_seq_ids: list[int] = []     # likewise

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)
        self._new_seqs.append(NewSequence(seq.seq_id, seq.index, seq.request.prompt_token_ids,
                                          seq.params))

    def schedule(self) -> ScheduledBatch:
        batch = ScheduledBatch([], SchedulerOutput([], self._new_seqs, self._finished_seq_ids))
        self._new_seqs, self._finished_seq_ids = [], []
        budget = self.max_num_batched_tokens
        preempted = self._schedule_running(batch, budget)
        if not preempted:
            self._schedule_waiting(batch, budget - batch.num_tokens)
        return batch

    def _schedule_running(self, batch: ScheduledBatch, budget: int) -> bool:
        """Schedules running sequences; returns whether any had to be preempted."""
        preempted, i = False, 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            n = min(seq.num_tokens - seq.num_computed_tokens, budget)
            while not self.block_manager.can_append(seq, n):
                victim = self.running.pop()  # the most recently admitted; maybe `seq` itself
                self._preempt(victim)
                preempted = True
                if victim is seq:
                    return preempted
            self.block_manager.append_slots(seq, n)
            batch.add(seq, n)
            budget -= n
            i += 1
        return preempted

    def _schedule_waiting(self, batch: ScheduledBatch, budget: int) -> None:
        bm = self.block_manager
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            if self._sibling_prefilling(seq):
                break  # wait one step so it can reuse the sibling's prompt blocks
            cached = [] if seq.computes_prompt_logprobs else bm.match_prefix(seq)
            n = min(seq.num_tokens - len(cached) * bm.block_size, budget)
            if not bm.can_admit(seq, cached, n):
                break
            self.waiting.popleft()
            bm.admit(seq, cached)
            bm.append_slots(seq, n)
            self.prefix_cache_queries += seq.num_tokens
            self.prefix_cache_hits += seq.num_cached_tokens
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            batch.add(seq, n)
            budget -= n

    def _sibling_prefilling(self, seq: Sequence) -> bool:
        """Whether `seq` should wait for its request's first sample, which computes the prompt."""
        if not self.block_manager.enable_prefix_caching or seq.index == 0:
            return False
        first = seq.request.seqs[0]
        return (first.status is SequenceStatus.RUNNING
                and first.num_computed_tokens < first.num_prompt_tokens)

    def update_after_step(self, batch: ScheduledBatch) -> None:
        """Records the tokens a step computed, publishing newly full blocks to the prefix cache."""
        for seq, n in zip(batch.seqs, batch.num_new_tokens):
            seq.num_computed_tokens += n
            self.block_manager.register_computed(seq)

    def _preempt(self, seq: Sequence) -> None:
        self.block_manager.free(seq)
        seq.status = SequenceStatus.WAITING
        self.waiting.appendleft(seq)
        seq.num_preemptions += 1
        self.num_preemptions += 1

    def finish(self, seq: Sequence) -> None:
        """Retires a sequence (finished or aborted) and returns its blocks."""
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        elif seq.status is SequenceStatus.WAITING:
            self.waiting.remove(seq)
        self.block_manager.free(seq)
        seq.status = SequenceStatus.FINISHED
        self._finished_seq_ids.append(seq.seq_id)
