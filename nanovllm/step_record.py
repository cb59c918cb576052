"""One engine step as plain values: what it decided, what it did to the KV blocks, what the
model runner was given and what it sampled. The step-by-step mode (AsyncEngine.pause/step,
the web page's step view, docs/step_by_step.ipynb) shows one of these per step.

`StepRecorder` watches one LLMEngine.step from the outside, as the engine's `hook`: it copies
the scheduler's and block manager's state before the step, reads the step the scheduler
described and the runner's flat inputs and logits during it, and compares after. It runs only
when asked (`record_step(engine)`): a free-running engine never pays for it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from nanovllm.sequence import SequenceStatus
from nanovllm.snapshot import BlockPool, kind_of, pool_of

if TYPE_CHECKING:
    from nanovllm.contract.step import ModelRunnerOutput, SchedulerOutput
    from nanovllm.engine import LLMEngine
    from nanovllm.runner.model_runner import StepInputs
    from nanovllm.scheduler import Scheduler
    from nanovllm.sequence import Sequence
    from nanovllm.values.outputs import RequestOutput

TOP_K = 5  # probabilities kept for each sampled row

# What a sequence did in a step (SeqStep.action).
PREFILL = "prefill"      # a chunk of its prompt (or, after a preemption, of all its tokens)
DECODE = "decode"        # one token: the newest, whose K/V the cache lacks; then it samples
POOL = "pool"            # a text computed whole, then pooled (an embedding, a score); no KV kept
PREEMPTED = "preempted"  # its blocks were taken back; it waits to recompute
WAITING = "waiting"      # not scheduled this step (SeqStep.why says why)


@dataclass(slots=True)
class SeqStep:
    """One sequence of the engine (running or waiting at the step's start) in this step."""

    seq_id: int
    request_id: str
    index: int                 # which of its request's n samples
    action: str                # PREFILL, DECODE, POOL, PREEMPTED or WAITING
    kind: str                  # "generate", or a pooled text's task (snapshot.kind_of)
    why: str                   # a sentence for the learner
    start: int                 # the chunk's first position (its tokens' K/V go to start..)
    num_tokens: int            # tokens computed this step (0 unless prefill or decode)
    samples: bool              # the chunk reaches the sequence's end: a token is sampled
    finished: bool             # it finished in this step (its blocks are freed)
    blocks_before: list[int]   # its block table at the step's start
    blocks_after: list[int]    # and at its end


@dataclass(slots=True)
class BlockChanges:
    """Block ids by what happened to them in the step (a block may be in two lists: evicted
    and allocated, or freed and allocated to another sequence)."""

    allocated: list[int]  # taken from the free list for new K/V
    shared: list[int]     # found in the prefix cache and taken as is (no compute)
    freed: list[int]      # their last holder let go (they stay findable until evicted)
    evicted: list[int]    # dropped from the prefix cache: their K/V is about to be overwritten
    copied: list[int]     # copied on write: a copy of a block another sequence still holds


@dataclass(slots=True)
class RunnerInputs:
    """The flat arrays the runner built: one row per token computed, every sequence's chunk
    laid end to end (decodes first)."""

    token_ids: list[int]
    positions: list[int]      # each token's position in its sequence
    slot_mapping: list[int]   # where its K/V is written: block id * block_size + offset (none
    #                           in a pooling step: its texts keep no K/V)
    row_seq_ids: list[int]    # which sequence each row belongs to
    sample_rows: list[int]    # the rows whose logits are sampled (each chunk's last, if it samples)


@dataclass(slots=True)
class SampledRow:
    seq_id: int
    row: int                  # in RunnerInputs
    token_id: int             # what was sampled (with the request's sampling parameters)
    token: str
    top_token_ids: list[int]  # the model's TOP_K most likely tokens (softmax of the raw logits)
    top_tokens: list[str]
    top_probs: list[float]


@dataclass(slots=True)
class StepRecord:
    step: int                   # 1 for the engine's first step
    seqs: list[SeqStep]         # scheduled ones in the step's order, then the others
    blocks: BlockChanges
    pool: BlockPool             # the block pool after the step (as the engine view draws it)
    inputs: RunnerInputs
    sampled: list[SampledRow]
    num_preemptions: int

    def to_dict(self) -> dict:
        return _plain(self)


@dataclass(frozen=True, slots=True)
class StepMode:
    """Whether the engine is paused, and the record of the last step taken by StepOnce."""
    paused: bool
    lease_left: float           # seconds until a pause nobody renews ends by itself
    record: StepRecord | None   # None before the first single step
    num_steps: int              # the engine's steps so far

    def to_dict(self) -> dict:
        return {"paused": self.paused, "lease_left": round(self.lease_left, 1),
                "num_steps": self.num_steps,
                "record": None if self.record is None else self.record.to_dict()}


class StepModeDisabled(RuntimeError):
    """Pausing needs Inspector(client, enable_step_mode=True) (`serve --enable-step-mode`)."""


# A pause is a lease: the client that paused must renew it (the web page does while it is
# open), so one that disappears cannot freeze the server for longer than this.
DEFAULT_PAUSE_LEASE = 60.0
MAX_PAUSE_LEASE = 600.0


def _plain(value):
    if hasattr(value, "__slots__"):
        return {name: _plain(getattr(value, name)) for name in value.__slots__}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


@dataclass(slots=True)
class _State:
    tables: dict[int, list[int]]  # seq id -> block table, of every running and waiting seq
    seqs: list[Sequence]
    ref_count: list[int]
    cached: dict[int, int]        # block id -> the hash it is findable by


def _state(scheduler: Scheduler) -> _State:
    bm = scheduler.block_manager
    seqs = [*scheduler.running, *scheduler.waiting]
    return _State({s.seq_id: list(s.block_table) for s in seqs}, seqs,
                  [b.ref_count for b in bm.blocks],
                  {block_id: h for h, block_id in bm.hash_to_block_id.items()})


def record_step(engine: LLMEngine) -> tuple[list[RequestOutput], StepRecord | None]:
    """One engine step, recorded (None: nothing was scheduled, so no step ran)."""
    with recording(engine) as recorder:
        outputs = engine.step()
    return outputs, recorder.record


@contextmanager
def recording(engine: LLMEngine) -> Iterator[StepRecorder]:
    """The engine's steps inside the block are recorded (the last one's in `.record`)."""
    recorder = StepRecorder()
    engine.hook = recorder
    try:
        yield recorder
    finally:
        engine.hook = None
        engine.runner.keep_last_run = False


class StepRecorder:
    """Records one step as the engine's hook (engine.StepHook): `before` scheduling,
    `scheduled` once the step is described, `after` the engine processed its outputs (with the
    runner's inputs and logits, which it keeps for the step: `keep_last_run`)."""

    def __init__(self) -> None:
        self.record: StepRecord | None = None
        self.step: SchedulerOutput | None = None
        self.chunks: dict[int, tuple[int, int, bool]] = {}
        self.tables_scheduled: dict[int, list[int]] = {}
        self.why_waiting = ""
        self.inputs = RunnerInputs([], [], [], [], [])
        self.sample_logits = np.zeros((0, 0), np.float32)

    def before(self, engine: LLMEngine) -> None:
        self.scheduler, self.decode_token = engine.scheduler, engine.tokenizer.decode_token
        self.before_state = _state(engine.scheduler)
        self.preemptions = engine.scheduler.num_preemptions
        engine.runner.keep_last_run = True

    def after(self, engine: LLMEngine, step: SchedulerOutput, result: ModelRunnerOutput
              ) -> None:
        if result.pooled:  # the pooling runner's inputs are the step's texts, laid end to end
            self.inputs = RunnerInputs(
                [t for s in step.scheduled for t in s.token_ids],
                [p for s in step.scheduled for p in range(s.start, s.start + len(s.token_ids))],
                [], [s.seq_id for s in step.scheduled for _ in s.token_ids], [])
        else:
            self._ran(*engine.runner.last_run)
        engine.runner.keep_last_run = False
        self.record = self._finish(engine.num_steps, result.sampled)

    def scheduled(self, step: SchedulerOutput) -> None:
        """Right after schedule(): the step and why the rest waits."""
        self.step = step
        self.tables_scheduled = {s.seq_id: list(s.block_table) for s in step.scheduled}
        # seq id -> (start, tokens, whether it samples), in the step's order
        self.chunks = {s.seq_id: (s.start, len(s.token_ids), s.sample) for s in step.scheduled}
        self.why_waiting = self._why_waiting(sum(n for _, n, _ in self.chunks.values()))

    def _ran(self, inputs: StepInputs, sample_logits: np.ndarray) -> None:
        """The runner's flat inputs and the logits of its sampled rows (NativeModelRunner.last_run)."""
        n = len(sample_logits)
        ahead = inputs.lookahead
        self.inputs = RunnerInputs(
            inputs.token_ids.tolist(), inputs.positions.tolist(),
            inputs.attention.slot_mapping.tolist(),
            [e.seq_id for e in inputs.entries
             for _ in range(len(e.token_ids) + len(ahead.get(e.seq_id, ())))],
            inputs.logit_rows[:n].tolist())
        self.sample_logits = sample_logits

    def _finish(self, num_step: int, sampled: dict[int, list[int]]) -> StepRecord:
        sched, before = self.scheduler, self.before_state
        after = _state(sched)
        order = {seq_id: i for i, seq_id in enumerate(self.chunks)}
        seqs = sorted(before.seqs, key=lambda s: order.get(s.seq_id, len(order)))
        records = [self._seq_step(s, self.chunks.get(s.seq_id), after) for s in seqs]
        return StepRecord(num_step, records, self._block_changes(after),
                          pool_of(sched.block_manager, sched.running), self.inputs,
                          self._sampled(sampled), sched.num_preemptions - self.preemptions)

    def _seq_step(self, seq: Sequence, chunk, after: _State) -> SeqStep:
        before = self.before_state.tables.get(seq.seq_id, [])
        blocks_after = after.tables.get(seq.seq_id, [])
        finished = seq.status is SequenceStatus.FINISHED
        was_running = bool(before) or seq.seq_id in self.tables_scheduled
        kind = kind_of(seq)
        if chunk is not None:
            start, n, samples = chunk
            if seq.request.pooling is not None:
                action, samples = POOL, False
                why = (f"computes its {n} tokens whole and pools them ({kind}): no token "
                       "sampled, no K/V kept")
            else:
                action = PREFILL if start < seq.num_prompt_tokens or n > 1 else DECODE
                why = (f"computes positions {start}..{start + n - 1}"
                       + (" and samples the next token" if samples else
                          " (a chunk of its prompt: the rest in later steps)"))
            if finished:
                why += f"; finished ({seq.finish_reason})"
            return SeqStep(seq.seq_id, seq.request.request_id, seq.index, action, kind, why,
                           start, n, samples, finished, before, blocks_after)
        if was_running and seq.status is SequenceStatus.WAITING:
            action, why = PREEMPTED, "its blocks were taken back to make room; it will recompute"
        else:
            action, why = WAITING, self.why_waiting
        return SeqStep(seq.seq_id, seq.request.request_id, seq.index, action, kind, why,
                       seq.num_computed_tokens, 0, False, finished, before, blocks_after)

    def _why_waiting(self, num_tokens: int) -> str:
        """Why a sequence that was not scheduled waits (the scheduler's rules, in its order)."""
        sched = self.scheduler
        if num_tokens >= sched.max_num_batched_tokens:
            return f"the step's token budget ({sched.max_num_batched_tokens}) is spent"
        if len(sched.running) >= sched.max_num_seqs:
            return f"every sequence slot ({sched.max_num_seqs}) is taken"
        if sched.num_preemptions > self.preemptions:
            return "a sequence was preempted this step: nobody is admitted"
        return ("not enough free KV blocks (or it waits for its first sample to compute the "
                "prompt it shares)")

    def _block_changes(self, after: _State) -> BlockChanges:
        before = self.before_state
        allocated, shared = set(), set()
        evicted = {b for b, h in before.cached.items() if after.cached.get(b) != h}
        lost = set()
        for seq_id in set(before.tables) | set(self.tables_scheduled) | set(after.tables):
            had = set(before.tables.get(seq_id, []))
            mid = set(self.tables_scheduled.get(seq_id, [])) | set(after.tables.get(seq_id, []))
            for b in mid - had:  # cached and kept its hash: a prefix-cache hit, else new K/V
                (shared if b in before.cached and b not in evicted else allocated).add(b)
            lost |= (had | mid) - set(after.tables.get(seq_id, []))
        # Let go by its last holder: free now, or reused by another sequence within the step.
        freed = {b for b in lost if after.ref_count[b] == 0 or b in allocated}
        copied = {dst for _, dst in self.step.blocks_to_copy} if self.step else set()
        return BlockChanges(sorted(allocated - copied), sorted(shared), sorted(freed),
                            sorted(evicted), sorted(copied))

    def _sampled(self, sampled: dict[int, list[int]]) -> list[SampledRow]:
        rows = self.inputs.sample_rows
        if not rows:
            return []
        logits = self.sample_logits.astype(np.float64)
        probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
        probs /= probs.sum(axis=-1, keepdims=True)
        k = min(TOP_K, probs.shape[-1])
        top = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
        out = []
        for i, row in enumerate(rows):
            seq_id = self.inputs.row_seq_ids[row]
            if seq_id not in sampled:  # a row that gave its candidates instead of a sample
                continue
            token = sampled[seq_id][0]  # a sample row's one token (speculating rows are not here)
            ids = top[i].tolist()
            out.append(SampledRow(seq_id, row, token, self.decode_token(token), ids,
                                  [self.decode_token(t) for t in ids],
                                  [round(float(p), 6) for p in probs[i, ids]]))
        return out
