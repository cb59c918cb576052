"""NativeModelRunner: turns one scheduled step into flat numpy inputs, runs GPT-2, samples.

Every token of the step goes through each weight matrix as one matmul. Single-token sequences
(decodes) are laid out first and attended together; multi-token chunks (prefills) follow. The
LM head runs only on rows that sample, plus prompt rows whose logprobs were asked for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from nanovllm.model import AttentionBatch, GPT2Config, GPT2Weights, forward
from nanovllm.model.gpt2 import compile_kernels
from nanovllm.runner.kv_cache import KVCache
from nanovllm.runner.memory import keep_freed_memory
from nanovllm.runner.sampler import TokenLogprobs, log_softmax, sample, token_logprobs

if TYPE_CHECKING:  # the engine's types; importing them at run time would be circular
    from nanovllm.scheduler import ScheduledBatch
    from nanovllm.sequence import Sequence


@dataclass(slots=True)
class StepInputs:
    token_ids: np.ndarray
    positions: np.ndarray
    attention: AttentionBatch
    logit_rows: np.ndarray
    sample_seqs: list[Sequence]                        # their rows come first in logit_rows
    prompt_rows: list[tuple[Sequence, int, int]]       # (seq, first prompt position, count)


@dataclass(slots=True)
class StepOutput:
    sampled: dict[int, int]                            # seq_id -> next token
    logprobs: dict[int, TokenLogprobs]                 # seq_id -> its logprobs, where asked
    prompt_logprobs: list[tuple[Sequence, int, list[TokenLogprobs]]]  # (seq, first position, ...)


class NativeModelRunner:
    def __init__(self, cfg: GPT2Config, weights: GPT2Weights, num_blocks: int, block_size: int,
                 kv_cache_dtype: str = "auto"):
        self.cfg, self.weights, self.block_size = cfg, weights, block_size
        keep_freed_memory()
        self.kv_cache = KVCache(cfg, num_blocks, block_size, kv_cache_dtype)
        compile_kernels()

    def run(self, batch: ScheduledBatch) -> StepOutput:
        inputs = self.prepare(batch)
        logits = forward(self.weights, self.cfg, inputs.token_ids, inputs.positions,
                         self.kv_cache.layers, inputs.attention, inputs.logit_rows)
        n = len(inputs.sample_seqs)
        tokens, logprobs = sample(logits[:n], inputs.sample_seqs, self.cfg.eos_token_id)
        return StepOutput(
            sampled={s.seq_id: int(t) for s, t in zip(inputs.sample_seqs, tokens)},
            logprobs={s.seq_id: lp for s, lp in zip(inputs.sample_seqs, logprobs) if lp},
            prompt_logprobs=self._prompt_logprobs(logits[n:], inputs.prompt_rows))

    def slots(self, block_table: list[int], positions: np.ndarray) -> np.ndarray:
        """Cache slots of one sequence's `positions`, through its block table."""
        blocks = np.take(block_table, positions // self.block_size)
        return blocks * self.block_size + positions % self.block_size

    def prepare(self, batch: ScheduledBatch) -> StepInputs:
        pairs = sorted(zip(batch.seqs, batch.num_new_tokens), key=lambda p: p[1] > 1)
        decodes = [s for s, n in pairs if n == 1]
        ids, pos, slot_parts, prefills = [], [], [], []
        sample_rows, sample_seqs, prompt_rows, prompt_logit_rows = [], [], [], []
        row = 0
        for seq, n in pairs:
            start = seq.num_computed_tokens
            positions = np.arange(start, start + n)
            ids.append(seq.token_ids[start:start + n])
            pos.append(positions)
            slot_parts.append(self.slots(seq.block_table, positions))
            if n > 1:
                context = self.slots(seq.block_table, np.arange(start + n)) if start else None
                prefills.append((row, row + n, context))
            if start + n == seq.num_tokens:
                sample_rows.append(row + n - 1)
                sample_seqs.append(seq)
            count = self._num_prompt_logprob_rows(seq, start, n)
            if count:
                prompt_rows.append((seq, start, count))
                prompt_logit_rows.extend(range(row, row + count))
            row += n
        attention = AttentionBatch(np.concatenate(slot_parts), len(decodes), self.block_size,
                                   *self._decode_context(decodes), prefills)
        return StepInputs(np.fromiter((t for part in ids for t in part), np.int64, row),
                          np.concatenate(pos), attention,
                          np.array(sample_rows + prompt_logit_rows, np.int64), sample_seqs,
                          prompt_rows)

    def _decode_context(self, decodes: list[Sequence]) -> tuple[np.ndarray, np.ndarray]:
        """Block tables of the decodes, 0-padded to the longest, and their context lengths."""
        lens = np.array([s.num_computed_tokens + 1 for s in decodes], np.int64)
        num_blocks = -(-lens.max(initial=0) // self.block_size)
        tables = np.zeros((len(decodes), num_blocks), np.int64)
        for i, s in enumerate(decodes):
            table = s.block_table[:num_blocks]
            tables[i, :len(table)] = table
        return tables, lens

    @staticmethod
    def _num_prompt_logprob_rows(seq: Sequence, start: int, n: int) -> int:
        """Rows of this chunk whose logits score the next prompt token (for prompt logprobs)."""
        if not seq.computes_prompt_logprobs:
            return 0
        return max(0, min(start + n, seq.num_prompt_tokens - 1) - start)

    @staticmethod
    def _prompt_logprobs(logits: np.ndarray, prompt_rows) -> list:
        out, row = [], 0
        for seq, start, count in prompt_rows:
            lps = log_softmax(logits[row:row + count])
            nxt = seq.token_ids[start + 1:start + 1 + count]
            top_n = seq.params.prompt_logprobs
            out.append((seq, start, [token_logprobs(lp, t, top_n) for lp, t in zip(lps, nxt)]))
            row += count
        return out
