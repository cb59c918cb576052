"""NativeModelRunner: turns one scheduled step into flat numpy inputs, runs the model, samples.

Each step says everything the runner needs (nanovllm/contract/step.py): every scheduled
sequence's new tokens, positions and block table, whether it samples (or gives its most likely
next tokens) and which prompt tokens it scores, and the sequences announced and retired since
the last step. The runner keeps only each live sequence's own sampling state
(runner/seq_state.py), keyed by seq id. Lookahead slots are the `Speculator`'s to fill
(runner/spec_decode/), before the forward pass, and to check after it: each token in them is
one more row of its sequence.

Every token of the step goes through each weight matrix as one matmul. Decodes, each with the
proposals it verifies if they make at most `MAX_DECODE_RUN` rows, are laid out first, and each
of their rows is attended as a decode of its own, its own position the last it sees
(model/layers/attention.py); prompt chunks (and longer verify runs) follow. The LM head runs only on
rows that sample, plus prompt rows whose logprobs were asked for (with lookahead, every row of
its sequence).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from nanovllm.contract.step import (
    ModelRunnerOutput,
    NewSequence,
    ScheduledSequence,
    SchedulerOutput,
    TokenLogprobs,
)
from nanovllm.model import AttentionBatch
from nanovllm.model.architectures.registry import ModelConfig, family_of
from nanovllm.model.layers.attention import MAX_DECODE_RUN
from nanovllm.model.layers.kernel_needs import kernel_needs
from nanovllm.model.layers.linear import compile_linear_kernel
from nanovllm.runner.beam import beam_offers, compile_beam_offers
from nanovllm.runner.compile_aside import attention_aside
from nanovllm.runner.kv_cache import KVCache
from nanovllm.runner.memory import keep_freed_memory
from nanovllm.runner.sampler import (
    compile_draw,
    log_softmax,
    new_sequence_state,
    sample,
    token_logprobs,
    took,
)
from nanovllm.runner.seq_state import SequenceState
from nanovllm.runner.spec_decode.speculator import Speculator
from nanovllm.runner.structured import StartMatchers
from nanovllm.values.limits import MAX_CACHED_GRAMMARS


class StepAdapters(Protocol):
    """Per-sequence changes to the model (LoRA: model/lora/loaded.py), by adapter id."""
    def __contains__(self, adapter_id: int) -> bool: ...
    def weights_for(self, weights, row_adapters: np.ndarray): ...


@dataclass(slots=True)
class StepInputs:
    token_ids: np.ndarray
    positions: np.ndarray
    attention: AttentionBatch
    logit_rows: np.ndarray
    sampling: list[ScheduledSequence]  # their rows come first in logit_rows, one each
    scoring: list[ScheduledSequence]   # then these, len(prompt_logprob_ids) rows each
    entries: list[ScheduledSequence]   # every chunk, in row order
    # then these, with tokens in lookahead slots: 1 + len(lookahead[seq_id]) rows each
    ahead: list[ScheduledSequence] = field(default_factory=list)
    lookahead: dict[int, list[int]] = field(default_factory=dict)  # seq id -> those tokens
    row_adapters: np.ndarray | None = None  # each row's adapter id (None: no row has one)


class NativeModelRunner:
    def __init__(self, cfg: ModelConfig, weights, num_blocks: int, block_size: int,
                 kv_cache_dtype: str = "float32", seed: int = 0,
                 speculator: Speculator | None = None, adapters: StepAdapters | None = None):
        self.cfg, self.weights, self.block_size = cfg, weights, block_size
        self.speculator = speculator
        self.adapters = adapters  # the adapters a sequence may ask for (LoRA), by id
        self.eos_token_ids = list(cfg.eos_token_ids)  # what min_tokens bans, read every step
        self.model = family_of(cfg)  # the architecture's forward pass and kernels
        self.states: dict[int, SequenceState] = {}
        self.start_matchers = StartMatchers(MAX_CACHED_GRAMMARS)  # new sequences copy theirs
        self._seeds = np.random.SeedSequence(seed)  # unseeded requests' generators spawn from it
        self.keep_last_run = False  # set: `last_run` keeps each step's inputs and sampled logits
        self.last_run: tuple[StepInputs, np.ndarray] | None = None
        keep_freed_memory()
        self.kv_cache = KVCache(cfg, num_blocks, block_size, kv_cache_dtype)
        needs = kernel_needs(weights, kv_cache_dtype, cfg)
        with attention_aside(needs):  # (the largest groups side by side, into numba's cache)
            compile_linear_kernel(needs)
            compile_beam_offers()
            compile_draw()
        self.model.compile_kernels(needs)  # (what is cached now only loaded)

    def run(self, step: SchedulerOutput) -> ModelRunnerOutput:
        for new in step.new_seqs:  # first: an aborted newcomer still takes its seed, as it did
            self.states[new.seq_id] = self._new_state(new)
        for seq_id in step.finished_seq_ids:
            self.states.pop(seq_id, None)
        if step.blocks_to_copy:  # shared blocks copied on write, before anything is written
            self.kv_cache.copy_blocks(step.blocks_to_copy)
        if self.speculator:
            self.speculator.start(step)
        if not step.scheduled:
            return ModelRunnerOutput({}, {}, {})
        filled = (self.speculator.propose(step.scheduled, self.states, self.prepare)
                  if self.speculator else {})
        inputs = self.prepare(step.scheduled, {i: p.token_ids for i, p in filled.items()})
        weights = (self.weights if inputs.row_adapters is None
                   else self.adapters.weights_for(self.weights, inputs.row_adapters))
        logits = self.model.forward(weights, self.cfg, inputs.token_ids, inputs.positions,
                                    self.kv_cache.layers, inputs.attention, inputs.logit_rows)
        n = len(inputs.sampling)
        if self.keep_last_run:  # the step-by-step mode shows what the model was given
            self.last_run = (inputs, logits[:n].copy())
        rows = [i for i, e in enumerate(inputs.sampling) if not e.num_candidates]
        ranked = [inputs.sampling[i] for i, e in enumerate(inputs.sampling) if e.num_candidates]
        sampling = [inputs.sampling[i] for i in rows]
        states = [self.states[e.seq_id] for e in sampling]
        tokens, logprobs = sample(logits[rows] if ranked else logits[:n], states,
                                  [e.num_output_tokens for e in sampling], self.eos_token_ids)
        tokens = tokens.tolist()
        for state, token in zip(states, tokens):
            took(state, token)
        seq_ids = [e.seq_id for e in sampling]
        m = n + sum(len(e.prompt_logprob_ids) for e in inputs.scoring)
        out = ModelRunnerOutput({i: [t] for i, t in zip(seq_ids, tokens)},
                                {i: [lp] for i, lp in zip(seq_ids, logprobs) if lp},
                                self._prompt_logprobs(logits[n:m], inputs.scoring),
                                self._candidates(logits[:n], inputs.sampling, ranked))
        if self.speculator:
            self.speculator.verify(logits[m:], inputs.ahead, filled, self.states,
                                   self.eos_token_ids, out)
            self.speculator.took(out)
        return out

    def step_took(self, seconds: float) -> None:
        """The engine's whole step, scheduling to outputs, took `seconds`: what the speculator
        weighs its k by."""
        if self.speculator:
            self.speculator.timed_step(seconds)

    def _candidates(self, logits: np.ndarray, sampling: list[ScheduledSequence],
                    ranked: list[ScheduledSequence]) -> dict[int, tuple[list[int], list[float]]]:
        """The most likely next tokens of the rows that asked for them instead of a sample,
        scored from log_softmax(logits / temperature) without penalties (runner/beam.py)."""
        if not ranked:
            return {}
        rows = [i for i, e in enumerate(sampling) if e.num_candidates]
        found = beam_offers(logits[rows], [self.states[e.seq_id].params.temperature for e in ranked],
                            [e.num_candidates for e in ranked])
        return {e.seq_id: c for e, c in zip(ranked, found)}

    def _new_state(self, new: NewSequence) -> SequenceState:
        """A seeded request's sample i draws from [seed, i], so it samples the same alone or in
        any batch; the others spawn, in arrival order, from the engine's seed."""
        p = new.params
        seed = [p.seed % 2**64, new.index] if p.seed is not None else self._seeds.spawn(1)[0]
        return new_sequence_state(p, new.prompt_token_ids, np.random.default_rng(seed),
                                  self.cfg.eos_token_id, self.start_matchers)

    def slots(self, block_table: list[int], positions: np.ndarray) -> np.ndarray:
        """Cache slots of one sequence's `positions`, through its block table."""
        blocks = np.take(block_table, positions // self.block_size)
        return blocks * self.block_size + positions % self.block_size

    def prepare(self, scheduled: list[ScheduledSequence],
                lookahead: dict[int, list[int]] | None = None) -> StepInputs:
        """The step's flat inputs; `lookahead` (seq id -> tokens in its lookahead slots) adds
        rows after a sequence's tokens, every one of its rows scoring what follows it. Decodes,
        with what they verify in at most MAX_DECODE_RUN rows, come first, as decode rows
        (`AttentionBatch`); the rest follow as prefill chunks."""
        lookahead = lookahead or {}

        def num_rows(e: ScheduledSequence) -> int:
            return len(e.token_ids) + len(lookahead.get(e.seq_id, ()))

        def as_decodes(e: ScheduledSequence) -> bool:
            return len(e.token_ids) == 1 and num_rows(e) <= MAX_DECODE_RUN

        entries = sorted(scheduled, key=lambda e: not as_decodes(e))
        decodes = [e for e in entries if as_decodes(e)]
        pos, slot_parts, prefills = [], [], []
        sample_rows, sampling, prompt_rows, scoring, ahead_rows, ahead = [], [], [], [], [], []
        # The decode rows' positions and slots in Python's integers: numpy's per-call cost, paid
        # for each of a large batch's sequences, was most of this function's time.
        size, counts = self.block_size, [num_rows(e) for e in decodes]
        decode_pos = [(e, p) for e, n in zip(decodes, counts) for p in range(e.start, e.start + n)]
        pos.append(np.array([p for _, p in decode_pos], np.int64))
        slot_parts.append(np.array([e.block_table[p // size] * size + p % size
                                    for e, p in decode_pos], np.int64))
        row = 0
        for e in entries:
            start, n = e.start, num_rows(e)
            if not as_decodes(e):
                positions = np.arange(start, start + n)
                pos.append(positions)
                slot_parts.append(self.slots(e.block_table, positions))
                context = self.slots(e.block_table, np.arange(start + n)) if start else None
                prefills.append((row, row + n, context))
            if e.seq_id in lookahead:  # every row scores what follows it
                ahead_rows.extend(range(row, row + n))
                ahead.append(e)
            elif e.sample:
                sample_rows.append(row + n - 1)
                sampling.append(e)
            if e.prompt_logprob_ids:
                prompt_rows.extend(range(row, row + len(e.prompt_logprob_ids)))
                scoring.append(e)
            row += n
        attention = AttentionBatch(np.concatenate(slot_parts), len(decode_pos), self.block_size,
                                   self._block_tables(decodes, counts), pos[0] + 1, prefills)
        token_ids = (t for e in entries
                     for part in (e.token_ids, lookahead.get(e.seq_id, ())) for t in part)
        adapted = any(e.adapter_id for e in entries)  # else the step skips adapters entirely
        row_adapters = np.repeat(np.array([e.adapter_id for e in entries], np.int64),
                                 [num_rows(e) for e in entries]) if adapted else None
        return StepInputs(np.fromiter(token_ids, np.int64, row), np.concatenate(pos), attention,
                          np.array(sample_rows + prompt_rows + ahead_rows, np.int64), sampling,
                          scoring, entries, ahead, lookahead, row_adapters)

    def _block_tables(self, decodes: list[ScheduledSequence], counts: list[int]) -> np.ndarray:
        """Each decode row's block table (its sequence's, `counts[i]` rows for decodes[i]),
        0-padded to the longest context's."""
        ends = [e.start + n for e, n in zip(decodes, counts)]
        num_blocks = -(-max(ends, default=0) // self.block_size)
        tables = np.array([e.block_table[:num_blocks] + [0] * (num_blocks - len(e.block_table))
                           for e in decodes], np.int64).reshape(len(decodes), num_blocks)
        return np.repeat(tables, counts, axis=0)

    def _prompt_logprobs(self, logits: np.ndarray, scoring: list[ScheduledSequence]
                         ) -> dict[int, list[TokenLogprobs]]:
        out, row = {}, 0
        for e in scoring:
            count = len(e.prompt_logprob_ids)
            top_n = self.states[e.seq_id].params.prompt_logprobs
            out[e.seq_id] = [token_logprobs(lp, t, top_n) for lp, t in
                             zip(log_softmax(logits[row:row + count]), e.prompt_logprob_ids)]
            row += count
        return out

