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
- A group of width k (a request whose sequences advance together: `Request.group`) needs k
  slots at once: it waits for them, reserves them when admitted, and gives them up whole when
  it is the request holding the most. Requests needing one slot are never held behind a group
  that cannot start; the others wait behind it, so it is not starved.
- Preemption for blocks takes the newest sequence of the request holding the most.
So a one-token request waits neither for a big request's queue nor for its sequences to finish.
The scheduling policy (nanovllm/scheduling_policy.py) may rank requests before all this: under
'priority', only the best priority waiting is admitted, and the lowest priority running gives
way first; the fairness above then holds among equals.
Inside a request nothing changes: its samples share the prompt's blocks (they wait one step for
the first sample to compute the prompt), and its sequences are admitted in order (a
preempted one first).

A decode may also reserve k lookahead slots past its token, as many as the `lookahead` rule
it was built with allows (and only in free blocks: lookahead never preempts anyone); the runner
may compute tokens in them, keeping those the model agrees with. The rule is asked once a step
for the step's own rule; a step it gives none (too many sequences running to speculate) is
scheduled exactly as without it.

A step is described once, as plain values for the model runner (nanovllm/contract/step.py):
each scheduled sequence's new tokens and block table, whether it samples and which prompt
tokens it scores, with the sequences added, preempted and retired since the last step. After
the runner has run, `update_from_output` records what the step computed, and `apply` what the
output processor decided from it: the scheduler alone writes a sequence's tokens and lifecycle.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Iterable

from nanovllm.block_manager import BlockManager
from nanovllm.contract.step import (
    ModelRunnerOutput,
    NewSequence,
    ScheduledSequence,
    SchedulerOutput,
)
from nanovllm.scheduling_policy import SchedulingPolicy
from nanovllm.sequence import (
    Finish,
    Fork,
    Request,
    Sequence,
    SequenceStatus,
    StepDecisions,
)

# (a decode's sequence, tokens left in the step) -> lookahead slots it takes
StepLookahead = Callable[[Sequence, int], int]
# (sequences running) -> the step's rule, or None: no decode of the step takes slots
LookaheadRule = Callable[[int], StepLookahead | None]


class Scheduler:
    def __init__(self, block_manager: BlockManager, max_num_seqs: int, max_num_batched_tokens: int,
                 lookahead: LookaheadRule | None = None,
                 policy: SchedulingPolicy | None = None):
        self.block_manager = block_manager
        self.lookahead = lookahead
        self.policy = policy or SchedulingPolicy()
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
        self._preempted_seq_ids: list[int] = []    # likewise

    @property
    def waiting(self) -> list[Sequence]:
        """Every waiting sequence, idle lane first (to look at; scheduling reads the lanes)."""
        return [seq for lane in (self.idle, self.busy) for queue in lane.values() for seq in queue]

    def add(self, seq: Sequence) -> None:
        self._enqueue(seq)
        self.seqs[seq.seq_id] = seq
        self._new_seqs.append(seq.announce())

    def schedule(self) -> SchedulerOutput:
        step = SchedulerOutput([], self._new_seqs, self._finished_seq_ids,
                               self._preempted_seq_ids)
        self._new_seqs, self._finished_seq_ids, self._preempted_seq_ids = [], [], []
        budget = self.max_num_batched_tokens
        self._make_room_for_idle()
        preempted = self._schedule_running(step, budget)
        if not preempted:
            self._schedule_waiting(step, budget - step.num_tokens)
        step.blocks_to_copy = self.block_manager.take_copies()
        return step

    @staticmethod
    def _schedule(step: SchedulerOutput, seq: Sequence, n: int, lookahead: int = 0) -> None:
        """Adds `seq`'s next `n` tokens to the step, with what the step makes of them."""
        start, end = seq.num_computed_tokens, seq.num_computed_tokens + n
        scored = []
        if seq.computes_prompt_logprobs:  # each row scores the next prompt token
            scored = seq.token_ids[start + 1:min(end, seq.num_prompt_tokens - 1) + 1]
        step.scheduled.append(ScheduledSequence(
            seq.seq_id, seq.token_ids[start:end], start, seq.block_table,
            sample=end == seq.num_tokens,  # the chunk reaches the end of the sequence's tokens
            num_output_tokens=seq.num_output_tokens, prompt_logprob_ids=scored,
            num_candidates=seq.request.group.num_candidates if seq.request.group else 0,
            num_lookahead=lookahead, adapter_id=seq.request.adapter_id))
        step.num_tokens += n + lookahead

    def _make_room_for_idle(self) -> None:
        """Frees a slot for each idle request needing one that the free slots do not cover,
        taking the newest sequence of the request that holds the most, while it holds at least
        two. A group gives up its slots whole: its members advance together, so a split group
        would wait while holding slots (it recomputes later; its full blocks stay in the prefix
        cache). Groups never make room for each other: they would take turns preempting one
        another. The free slots go to the newcomers in the policy's order (a better priority
        first; among equals, the lane's), each after the sequences admitted before it
        (`_admitted_before`), and a request the policy ranks above the first one they do not
        cover keeps its slots."""
        newcomers = sorted((r for r in self.idle if self._slots_needed(r) == 1),
                           key=self.policy.order(lambda r: ()))
        while True:
            free = self._free_slots()
            uncovered = next((r for i, r in enumerate(newcomers)
                              if self._admitted_before(r, newcomers[:i]) >= free), None)
            if uncovered is None:
                return
            holders = [r for r in self.num_running if self._slots_held(r) >= 2
                       and not self.policy.outranks(r, uncovered)]
            if not holders:
                return
            request = max(holders, key=self.policy.order(lambda r: (self._slots_held(r),)))
            for seq in [s for s in reversed(self.running) if s.request is request]:
                self._preempt(seq)
                if not request.group:
                    break

    def _admitted_before(self, newcomer: Request, ahead: list[Request]) -> int:
        """Sequences a step admits before `newcomer`'s first: the first of each newcomer `ahead`
        of it, and every waiting one of those, and of the running requests, that the policy
        ranks above it (under 'priority' a better request's sequences all go first)."""
        outranks = self.policy.outranks
        return (sum(len(self.idle[r]) if outranks(r, newcomer) else 1 for r in ahead)
                + sum(len(queue) for r, queue in self.busy.items()
                      if outranks(r, newcomer) and not r.group))  # (a group's are reserved)

    def _schedule_running(self, step: SchedulerOutput, budget: int) -> bool:
        """Schedules running sequences, decodes first (in the policy's order); returns whether
        any had to be preempted. A decode may take lookahead slots, only free ones: lookahead
        never preempts anyone."""
        prefilling = self.policy.order(lambda s: (s.num_tokens - s.num_computed_tokens > 1,))
        queue = deque(sorted(self.running, key=prefilling))
        lookahead = self.lookahead(len(self.running)) if self.lookahead else None
        preempted = False
        while queue and budget > 0:
            seq = queue.popleft()
            n = min(seq.num_tokens - seq.num_computed_tokens, budget)
            if n == 0:  # a group member that has offered, waiting for its group to advance
                if any(s.status is SequenceStatus.WAITING for s in seq.request.seqs):
                    self._preempt(seq)  # a split group holds no blocks while it waits
                continue
            k = 0
            if lookahead and not seq.request.group and n == seq.num_tokens - seq.num_computed_tokens == 1:
                k = lookahead(seq, budget - 1)
                if k and not self.block_manager.can_append(seq, 1 + k):
                    k = 0
            while not self.block_manager.can_append(seq, n):
                victim = self._victim([seq, *queue])
                self._preempt(victim)
                preempted = True
                if victim is seq:
                    break
                queue.remove(victim)
            if seq.status is SequenceStatus.RUNNING:
                self.block_manager.append_slots(seq, n + k)
                self._schedule(step, seq, n, k)
                budget -= n + k
        return preempted

    def _victim(self, candidates: list[Sequence]) -> Sequence:
        """The sequence, among `candidates`, that the policy has give way; among equals the
        newest of the request holding the most running."""
        admitted = {seq.seq_id: i for i, seq in enumerate(self.running)}
        return max(candidates, key=self.policy.order(
            lambda s: (self.num_running[s.request], admitted[s.seq_id])))

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
        """Whose next sequence is admitted (its lane and request), or None: the members of a
        running group first (their slots are reserved), then of the requests the policy admits
        next, the idle lane's, then the busy lane's in turn."""
        for request in self.busy:
            if request.group and request not in skipped:
                return self.busy, request
        idle, busy = self.policy.admissible(self.idle, self.busy)
        if idle:
            request = self._next_idle(idle)
            return None if request is None else (self.idle, request)
        request = next((r for r in busy if r not in skipped), None)
        return None if request is None or self._free_slots() < 1 else (self.busy, request)

    def _next_idle(self, idle: Iterable[Request]) -> Request | None:
        """The idle request to admit next, of `idle` (in the lane's order): the oldest needing
        one slot, else the oldest group if there is room for all its members. A newcomer never
        waits behind a group that cannot start yet; the busy lane does, so the group is not
        starved of slots."""
        free = self._free_slots()
        needing_one = next((r for r in idle if self._slots_needed(r) == 1), None)
        if needing_one is not None:
            return needing_one if free >= 1 else None
        group = next(iter(idle))
        return group if self._slots_needed(group) <= free else None

    def _slots_needed(self, request: Request) -> int:
        """Slots a waiting request takes when one of its sequences is admitted: a group with
        nothing running takes room for all its members at once, one that runs has them
        reserved."""
        if not request.group:
            return 1
        return 0 if self.num_running[request] else self._group_slots(request)

    @staticmethod
    def _group_slots(request: Request) -> int:
        """A group's width until its first sequence forks, then its members."""
        return request.group.width if len(request.seqs) == 1 else len(request.seqs)

    def _slots_held(self, request: Request) -> int:
        """Running sequences, and for a group the slots its members have reserved."""
        return self._group_slots(request) if request.group else self.num_running[request]

    def _free_slots(self) -> int:
        reserved = sum(self._group_slots(r) - n for r, n in self.num_running.items() if r.group)
        return self.max_num_seqs - len(self.running) - reserved

    def _sibling_prefilling(self, seq: Sequence) -> bool:
        """Whether `seq` should wait for its request's first sample, which computes the prompt.
        Never a group member: a split group's members are admitted together, or the first would
        offer, wait for the others, and be preempted for them again and again."""
        if not self.block_manager.enable_prefix_caching or seq.index == 0 or seq.request.group:
            return False
        first = seq.request.seqs[0]
        return (first.status is SequenceStatus.RUNNING
                and first.num_computed_tokens < first.num_prompt_tokens)

    def update_from_output(self, step: SchedulerOutput, result: ModelRunnerOutput
                           ) -> list[Sequence]:
        """Records the tokens a step computed: each chunk's, and the tokens kept in lookahead
        slots (every sampled token but the last); the slots not kept are given back. Returns
        the scheduled sequences, in the step's order."""
        seqs = [self.seqs[scheduled.seq_id] for scheduled in step.scheduled]
        bm = self.block_manager
        for seq, scheduled in zip(seqs, step.scheduled):
            if not scheduled.num_lookahead:
                bm.commit(seq, len(scheduled.token_ids))
                continue
            tokens = result.sampled.get(seq.seq_id, ())
            bm.commit(seq, len(scheduled.token_ids) + max(0, len(tokens) - 1))
            bm.trim(seq, seq.num_tokens + len(tokens))
        return seqs

    def _preempt(self, seq: Sequence) -> None:
        self._stop_running(seq)
        self.block_manager.free(seq)
        self._enqueue(seq, front=True)
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self._preempted_seq_ids.append(seq.seq_id)

    def apply(self, decisions: StepDecisions) -> None:
        """What the output processor decided from a step: the tokens taken, then the sequences
        finished (retired at once, their blocks returned), then the groups' forks."""
        for seq, tokens in decisions.tokens:
            seq.token_ids += tokens
        for seq, finish in decisions.finished:
            self._retire(seq, finish)
        for fork in decisions.forks:
            self.fork(fork)

    def fork(self, fork: Fork) -> None:
        """Makes a group's next members: the new ones run at once (they share their parents'
        blocks), then every member takes its parent's blocks and tokens plus its own token."""
        members = fork.request.seqs
        for child in fork.children:
            members.append(child)
            self.seqs[child.seq_id] = child
            self._new_seqs.append(child.announce())
            self._start_running(child)
        parents = [members[i] for i in fork.parents]
        tokens = [p.token_ids + [t] for p, t in zip(parents, fork.tokens)]
        self.block_manager.share(members, parents)
        for seq, token_ids in zip(members, tokens):
            seq.token_ids = token_ids

    def abort(self, request: Request) -> None:
        for seq in request.seqs:
            if not seq.is_finished:
                self._retire(seq, ("abort", None))

    def _retire(self, seq: Sequence, finish: Finish) -> None:
        seq.finish_reason, seq.stop_reason = finish
        self.finish(seq)

    def finish(self, seq: Sequence) -> None:
        """Retires a sequence whose finish reason is set, and returns its blocks."""
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
