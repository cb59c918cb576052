"""Continuous batching: decides, every step, which sequences compute how many tokens.

A step first serves the running sequences: every decode (one token each), then the prompts
still being prefilled, chunk by chunk, oldest first, so a long prompt never holds back anyone's
next token. Then it admits waiting sequences while the token budget, the sequence cap and free
KV blocks allow. When blocks run out, a sequence is preempted: its blocks are freed and it is
recomputed later (its finished prefix blocks usually survive in the prefix cache).

Fair between requests (a request is one prompt with its n samples, n sequences; the server
submits each prompt of a completion as a request of its own):
- Admission serves requests, not sequences: those with nothing running first, oldest first;
  then the others round-robin, one sequence each in turn.
- A request with nothing running gets a slot even when all are taken: the request holding the
  most running sequences gives up its newest one (if it holds at least two).
- A beam search of width k needs k slots at once (its beams advance together): it waits for
  them, reserves them when admitted, and gives them up whole when it is the request holding
  the most. Requests needing one slot are never held behind a search that cannot start; the
  others wait behind it, so it is not starved.
- Preemption for blocks takes the newest sequence of the request holding the most.
So a one-token request waits neither for a big request's queue nor for its sequences to finish.
Inside a request nothing changes: its samples share the prompt's blocks (they wait one step for
the first sample to compute the prompt), and its sequences are admitted in order (a
preempted one first).

A step is described once, as plain values for the model runner (nanovllm/contract/step.py):
each scheduled sequence's new tokens and block table, whether it samples and which prompt
tokens it scores, with the sequences added and those retired since the last step. After the
runner has run, `update_from_output` maps the step back to the sequences by seq id.
"""

from __future__ import annotations

from collections import Counter, deque

from nanovllm.block_manager import BlockManager
from nanovllm.contract.step import NewSequence, ScheduledSequence, SchedulerOutput
from nanovllm.sequence import Request, Sequence, SequenceStatus
from nanovllm.speculation import NO_PLAN, SpecPlan, Speculator


class Scheduler:
    def __init__(self, block_manager: BlockManager, max_num_seqs: int, max_num_batched_tokens: int,
                 speculator: Speculator | None = None):
        self.block_manager = block_manager
        self.speculator = speculator
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        # Waiting sequences by request, in two lanes (dicts keep their order: the front is next).
        self.idle: dict[Request, deque[Sequence]] = {}  # requests with nothing running
        self.busy: dict[Request, deque[Sequence]] = {}  # requests with something running
        self.num_waiting_seqs = 0
        self.seqs: dict[int, Sequence] = {}             # every unfinished sequence, by seq id
        self.running: list[Sequence] = []               # in admission order
        self.num_running: Counter[Request] = Counter()  # running sequences per request
        self.num_preemptions = 0
        self.prefix_cache_queries = 0          # prompt tokens looked up in the prefix cache
        self.prefix_cache_hits = 0             # of those, found
        self._new_seqs: list[NewSequence] = []     # for the runner, in the next batch
        self._finished_seq_ids: list[int] = []     # likewise

    @property
    def waiting(self) -> list[Sequence]:
        """Every waiting sequence, idle lane first (to look at; scheduling reads the lanes)."""
        return [seq for lane in (self.idle, self.busy) for queue in lane.values() for seq in queue]

    def add(self, seq: Sequence) -> None:
        self._enqueue(seq)
        self.seqs[seq.seq_id] = seq
        self._new_seqs.append(seq.announce())

    def add_beam(self, seq: Sequence) -> None:
        """A beam forked from a running one: it runs at once (the engine gives it its blocks)."""
        self.seqs[seq.seq_id] = seq
        self._new_seqs.append(seq.announce())
        self._start_running(seq)

    def schedule(self) -> SchedulerOutput:
        step = SchedulerOutput([], self._new_seqs, self._finished_seq_ids)
        self._new_seqs, self._finished_seq_ids = [], []
        budget = self.max_num_batched_tokens
        self._make_room_for_idle()
        preempted = self._schedule_running(step, budget)
        if not preempted:
            self._schedule_waiting(step, budget - step.num_tokens)
        step.blocks_to_copy = self.block_manager.take_copies()
        return step

    @staticmethod
    def _schedule(step: SchedulerOutput, seq: Sequence, n: int, plan: SpecPlan = NO_PLAN) -> None:
        """Adds `seq`'s next `n` tokens to the step, with what the step makes of them."""
        start, end = seq.num_computed_tokens, seq.num_computed_tokens + n
        scored = []
        if seq.computes_prompt_logprobs:  # each row scores the next prompt token
            scored = seq.token_ids[start + 1:min(end, seq.num_prompt_tokens - 1) + 1]
        step.scheduled.append(ScheduledSequence(
            seq.seq_id, seq.token_ids[start:end], start, seq.block_table,
            sample=end == seq.num_tokens,  # the chunk reaches the end of the sequence's tokens
            num_output_tokens=seq.num_output_tokens, prompt_logprob_ids=scored,
            num_beam_candidates=seq.request.beam.params.num_candidates if seq.request.beam else 0,
            spec_token_ids=plan.spec_token_ids, num_draft_tokens=plan.num_draft_tokens,
            draft=plan.draft, num_proposals=plan.num_slots))
        step.num_tokens += n + plan.num_slots

    def _make_room_for_idle(self) -> None:
        """Frees a slot for each idle request needing one that the free slots do not cover,
        taking the newest sequence of the request that holds the most, while it holds at least
        two. A beam search gives up its slots whole: its beams advance together, so a split
        group would wait while holding slots (it recomputes later; its full blocks stay in the
        prefix cache). Beam searches never make room for each other: they would take turns
        preempting one another."""
        newcomers = sum(self._slots_needed(r) == 1 for r in self.idle)
        while newcomers > self._free_slots():
            held = {r: self._slots_held(r) for r in self.num_running}
            request = max(held, key=held.__getitem__, default=None)
            if request is None or held[request] < 2:
                return
            for seq in [s for s in reversed(self.running) if s.request is request]:
                self._preempt(seq)
                if not request.beam:
                    break

    def _schedule_running(self, step: SchedulerOutput, budget: int) -> bool:
        """Schedules running sequences, decodes first; returns whether any had to be preempted.
        A decode may bring proposals to verify (speculative decoding), in slots that are free:
        speculation never preempts anyone."""
        queue = deque(sorted(self.running, key=lambda s: s.num_tokens - s.num_computed_tokens > 1))
        speculates = self.speculator is not None and self.speculator.config.speculates(
            len(self.running))
        preempted = False
        while queue and budget > 0:
            seq = queue.popleft()
            n = min(seq.num_tokens - seq.num_computed_tokens, budget)
            if n == 0:  # a beam that has offered, waiting for its group to advance
                if any(s.status is SequenceStatus.WAITING for s in seq.request.seqs):
                    self._preempt(seq)  # a split group holds no blocks while it waits
                continue
            plan = NO_PLAN
            if (speculates and seq.request.beam is None  # beams never speculate
                    and seq.num_tokens - seq.num_computed_tokens == 1):
                plan = self.speculator.plan(seq, budget - 1)
                if plan.num_slots and not self.block_manager.can_append(seq, 1 + plan.num_slots):
                    plan = NO_PLAN
            while not self.block_manager.can_append(seq, n):
                victim = self._victim([seq, *queue])
                self._preempt(victim)
                preempted = True
                if victim is seq:
                    break
                queue.remove(victim)
            if seq.status is SequenceStatus.RUNNING:
                self.block_manager.append_slots(seq, n + plan.num_slots)
                self._schedule(step, seq, n, plan)
                budget -= n + plan.num_slots
        return preempted

    def _victim(self, candidates: list[Sequence]) -> Sequence:
        """The newest sequence, among `candidates`, of the request holding the most running."""
        admitted = {seq.seq_id: i for i, seq in enumerate(self.running)}
        return max(candidates, key=lambda s: (self.num_running[s.request], admitted[s.seq_id]))

    def _schedule_waiting(self, step: SchedulerOutput, budget: int) -> None:
        bm = self.block_manager
        skipped: set[Request] = set()  # busy requests whose first sample is still prefilling
        while budget > 0 and len(self.running) < self.max_num_seqs:
            pick = self._next_waiting(skipped)
            if pick is None:
                return
            lane, request = pick
            seq = lane[request][0]
            if self._sibling_prefilling(seq):
                lane[request] = lane.pop(request)  # to the back: it can reuse the prompt next step
                skipped.add(request)
                continue
            whole = seq.prefill_only  # all of it in this step, or it waits for one with room
            cached = [] if seq.computes_prompt_logprobs or whole else bm.match_prefix(seq)
            n = min(seq.num_tokens - len(cached) * bm.block_size, budget)
            if (whole and n < seq.num_tokens) or not bm.can_admit(seq, cached, n):
                return  # no one jumps the line for blocks: a long prompt is never starved
            self._dequeue(seq)
            bm.admit(seq, cached)
            bm.append_slots(seq, n)
            self.prefix_cache_queries += seq.num_tokens
            self.prefix_cache_hits += seq.num_cached_tokens
            self._start_running(seq)
            self._schedule(step, seq, n)
            budget -= n

    def _next_waiting(self, skipped: set[Request]) -> tuple[dict, Request] | None:
        """Whose next sequence is admitted (its lane and request), or None: the beams of a
        running beam search first (their slots are reserved), then the idle lane, then the
        busy lane in turn."""
        for request in self.busy:
            if request.beam and request not in skipped:
                return self.busy, request
        if self.idle:
            request = self._next_idle()
            return None if request is None else (self.idle, request)
        request = next((r for r in self.busy if r not in skipped), None)
        return None if request is None or self._free_slots() < 1 else (self.busy, request)

    def _next_idle(self) -> Request | None:
        """The idle request to admit next: the oldest needing one slot, else the oldest beam
        search if there is room for all its beams. A newcomer never waits behind a search that
        cannot start yet; the busy lane does, so the search is not starved of slots."""
        free = self._free_slots()
        needing_one = next((r for r in self.idle if self._slots_needed(r) == 1), None)
        if needing_one is not None:
            return needing_one if free >= 1 else None
        search = next(iter(self.idle))
        return search if self._slots_needed(search) <= free else None

    def _slots_needed(self, request: Request) -> int:
        """Slots a waiting request takes when one of its sequences is admitted: a beam search
        with nothing running takes room for all its beams at once (a prompt not yet forked,
        for beam_width), one that runs has them reserved."""
        if not request.beam:
            return 1
        return 0 if self.num_running[request] else self._beam_slots(request)

    @staticmethod
    def _beam_slots(request: Request) -> int:
        return request.params.n if len(request.seqs) == 1 else len(request.seqs)

    def _slots_held(self, request: Request) -> int:
        """Running sequences, and for a beam search the slots its beams have reserved."""
        return self._beam_slots(request) if request.beam else self.num_running[request]

    def _free_slots(self) -> int:
        reserved = sum(self._beam_slots(r) - n for r, n in self.num_running.items() if r.beam)
        return self.max_num_seqs - len(self.running) - reserved

    def _sibling_prefilling(self, seq: Sequence) -> bool:
        """Whether `seq` should wait for its request's first sample, which computes the prompt.
        Never a beam: the beams of a split search are admitted together, or the first would
        offer, wait for the others, and be preempted for them again and again."""
        if not self.block_manager.enable_prefix_caching or seq.index == 0 or seq.request.beam:
            return False
        first = seq.request.seqs[0]
        return (first.status is SequenceStatus.RUNNING
                and first.num_computed_tokens < first.num_prompt_tokens)

    def update_from_output(self, step: SchedulerOutput) -> list[Sequence]:
        """Records the tokens a step computed, publishing newly full blocks to the prefix cache;
        returns the scheduled sequences, in the step's order."""
        seqs = [self.seqs[scheduled.seq_id] for scheduled in step.scheduled]
        for seq, scheduled in zip(seqs, step.scheduled):
            seq.num_computed_tokens += len(scheduled.token_ids)
            if not seq.prefill_only:  # (which keeps nothing to reuse)
                self.block_manager.register_computed(seq)
        return seqs

    def update_speculated(self, seq: Sequence, scheduled: ScheduledSequence, num_kept: int
                          ) -> None:
        """After the engine appended a speculating decode's tokens (`num_kept` proposals, then
        the target's own): the kept proposals' K/V are valid, the rejected ones' slots are
        rolled back and a block left holding none of the sequence's tokens is freed. Only then
        are full blocks published, so the prefix cache never sees a rejected token."""
        seq.num_computed_tokens += num_kept
        if scheduled.num_draft_tokens:
            # The draft's cache reached the decode's position plus its k - 1 fed-back
            # proposals; it stays valid up to the last kept one.
            seq.num_draft_computed = scheduled.start + 1 + min(num_kept,
                                                               scheduled.num_draft_tokens - 1)
        self.block_manager.register_computed(seq)
        self.block_manager.trim(seq)

    def _preempt(self, seq: Sequence) -> None:
        self._stop_running(seq)
        self.block_manager.free(seq)
        self._enqueue(seq, front=True)
        seq.num_preemptions += 1
        self.num_preemptions += 1

    def finish(self, seq: Sequence) -> None:
        """Retires a sequence (finished or aborted) and returns its blocks."""
        if seq.status is SequenceStatus.RUNNING:
            self._stop_running(seq)
        elif seq.status is SequenceStatus.WAITING:
            self._dequeue(seq)
        self.block_manager.free(seq)
        seq.status = SequenceStatus.FINISHED
        del self.seqs[seq.seq_id]
        self._finished_seq_ids.append(seq.seq_id)

    # ---- the queues ----------------------------------------------------------------------------
    def _enqueue(self, seq: Sequence, front: bool = False) -> None:
        request = seq.request
        lane = self.busy if self.num_running[request] else self.idle
        queue = lane.setdefault(request, deque())
        if front:
            queue.appendleft(seq)
        else:
            queue.append(seq)
        seq.status = SequenceStatus.WAITING
        self.num_waiting_seqs += 1

    def _dequeue(self, seq: Sequence) -> None:
        """Takes `seq` out of its request's queue; a request served moves to the lane's back."""
        request = seq.request
        lane = self.busy if request in self.busy else self.idle
        queue = lane.pop(request)
        queue.remove(seq)
        self.num_waiting_seqs -= 1
        if queue:
            (self.busy if self.num_running[request] else self.idle)[request] = queue

    def _start_running(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.RUNNING
        self.running.append(seq)
        request = seq.request
        self.num_running[request] += 1
        if request in self.idle:  # it runs now: the rest of it waits its turn with the busy
            self.busy[request] = self.idle.pop(request)

    def _stop_running(self, seq: Sequence) -> None:
        self.running.remove(seq)
        request = seq.request
        self.num_running[request] -= 1
        if not self.num_running[request]:
            del self.num_running[request]
            if request in self.busy:  # nothing of it runs any more: back to the idle lane
                self.idle[request] = self.busy.pop(request)
