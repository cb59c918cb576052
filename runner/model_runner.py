"""NativeModelRunner: turns one scheduled step into flat numpy inputs, runs GPT-2, samples.

It keeps each live sequence's sampling state (SequenceState), keyed by seq id, so the
scheduler only sends what changes (nanovllm/contract/step.py): new sequences, finished ones, and each
scheduled sequence's block table and token counts.

Every token of the step goes through each weight matrix as one matmul. Single-token sequences
(decodes) are laid out first and attended together; multi-token chunks (prefills) follow. The
LM head runs only on rows that sample, plus prompt rows whose logprobs were asked for.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nanovllm.contract.step import (
    ModelRunnerOutput,
    NewSequence,
    PromptLogprobs,
    ScheduledSequence,
    SchedulerOutput,
)
from nanovllm.model import AttentionBatch, GPT2Config, GPT2Weights, forward
from nanovllm.model.gpt2 import compile_kernels
from nanovllm.runner.kv_cache import KVCache
from nanovllm.runner.memory import keep_freed_memory
from nanovllm.runner.sampler import SequenceState, log_softmax, sample, token_logprobs
from nanovllm.runner.structured import GrammarMatcher


@dataclass(slots=True)
class StepInputs:
    token_ids: np.ndarray
    positions: np.ndarray
    attention: AttentionBatch
    logit_rows: np.ndarray
    sample_ids: list[int]                              # their rows come first in logit_rows
    prompt_rows: list[tuple[int, int, int]]            # (seq id, first prompt position, count)


class NativeModelRunner:
    def __init__(self, cfg: GPT2Config, weights: GPT2Weights, num_blocks: int, block_size: int,
                 kv_cache_dtype: str = "auto", seed: int = 0):
        self.cfg, self.weights, self.block_size = cfg, weights, block_size
        self.states: dict[int, SequenceState] = {}
        self._seeds = np.random.SeedSequence(seed)  # unseeded requests' generators spawn from it
        keep_freed_memory()
        self.kv_cache = KVCache(cfg, num_blocks, block_size, kv_cache_dtype)
        compile_kernels()

    def run(self, batch: SchedulerOutput) -> ModelRunnerOutput:
        for new in batch.new_seqs:  # first: an aborted newcomer still takes its seed, as it did
            self.states[new.seq_id] = self._new_state(new)
        for seq_id in batch.finished_seq_ids:
            self.states.pop(seq_id, None)
        if not batch.scheduled:
            return ModelRunnerOutput({}, {}, [])
        inputs = self.prepare(batch.scheduled)
        logits = forward(self.weights, self.cfg, inputs.token_ids, inputs.positions,
                         self.kv_cache.layers, inputs.attention, inputs.logit_rows)
        n = len(inputs.sample_ids)
        states = [self.states[i] for i in inputs.sample_ids]
        tokens, logprobs = sample(logits[:n], states, self.cfg.eos_token_id)
        prompt_logprobs = self._prompt_logprobs(logits[n:], inputs.prompt_rows)
        tokens = tokens.tolist()
        for state, token in zip(states, tokens):
            state.append(token)
        return ModelRunnerOutput(dict(zip(inputs.sample_ids, tokens)),
                                 {i: lp for i, lp in zip(inputs.sample_ids, logprobs) if lp},
                                 prompt_logprobs)

    def _new_state(self, new: NewSequence) -> SequenceState:
        """A seeded request's sample i draws from [seed, i], so it samples the same alone or in
        any batch; the others spawn, in arrival order, from the engine's seed."""
        p = new.params
        seed = [p.seed % 2**64, new.index] if p.seed is not None else self._seeds.spawn(1)[0]
        grammar = GrammarMatcher(p.structured, self.cfg.eos_token_id) if p.structured is not None else None
        return SequenceState(p, new.index, list(new.prompt_token_ids), len(new.prompt_token_ids),
                             np.random.default_rng(seed), grammar=grammar)

    def slots(self, block_table: list[int], positions: np.ndarray) -> np.ndarray:
        """Cache slots of one sequence's `positions`, through its block table."""
        blocks = np.take(block_table, positions // self.block_size)
        return blocks * self.block_size + positions % self.block_size

    def prepare(self, scheduled: list[ScheduledSequence]) -> StepInputs:
        entries = sorted(scheduled, key=lambda e: e.num_new_tokens > 1)
        decodes = [e for e in entries if e.num_new_tokens == 1]
        ids, pos, slot_parts, prefills = [], [], [], []
        sample_rows, sample_ids, prompt_rows, prompt_logit_rows = [], [], [], []
        row = 0
        for e in entries:
            state, start, n = self.states[e.seq_id], e.num_computed_tokens, e.num_new_tokens
            positions = np.arange(start, start + n)
            ids.append(state.token_ids[start:start + n])
            pos.append(positions)
            slot_parts.append(self.slots(e.block_table, positions))
            if n > 1:
                context = self.slots(e.block_table, np.arange(start + n)) if start else None
                prefills.append((row, row + n, context))
            if start + n == len(state.token_ids):
                sample_rows.append(row + n - 1)
                sample_ids.append(e.seq_id)
            count = self._num_prompt_logprob_rows(state, start, n)
            if count:
                prompt_rows.append((e.seq_id, start, count))
                prompt_logit_rows.extend(range(row, row + count))
            row += n
        attention = AttentionBatch(np.concatenate(slot_parts), len(decodes), self.block_size,
                                   *self._decode_context(decodes), prefills)
        return StepInputs(np.fromiter((t for part in ids for t in part), np.int64, row),
                          np.concatenate(pos), attention,
                          np.array(sample_rows + prompt_logit_rows, np.int64), sample_ids,
                          prompt_rows)

    def _decode_context(self, decodes: list[ScheduledSequence]) -> tuple[np.ndarray, np.ndarray]:
        """Block tables of the decodes, 0-padded to the longest, and their context lengths."""
        lens = np.array([e.num_computed_tokens + 1 for e in decodes], np.int64)
        num_blocks = -(-lens.max(initial=0) // self.block_size)
        tables = np.zeros((len(decodes), num_blocks), np.int64)
        for i, e in enumerate(decodes):
            table = e.block_table[:num_blocks]
            tables[i, :len(table)] = table
        return tables, lens

    @staticmethod
    def _num_prompt_logprob_rows(state: SequenceState, start: int, n: int) -> int:
        """Rows of this chunk whose logits score the next prompt token (for prompt logprobs)."""
        if not state.scores_prompt:
            return 0
        return max(0, min(start + n, state.num_prompt_tokens - 1) - start)

    def _prompt_logprobs(self, logits: np.ndarray, prompt_rows) -> list[PromptLogprobs]:
        out, row = [], 0
        for seq_id, start, count in prompt_rows:
            state = self.states[seq_id]
            lps = log_softmax(logits[row:row + count])
            nxt = state.token_ids[start + 1:start + 1 + count]
            top_n = state.params.prompt_logprobs
            out.append(PromptLogprobs(seq_id, start, [token_logprobs(lp, t, top_n)
                                                      for lp, t in zip(lps, nxt)]))
            row += count
        return out
