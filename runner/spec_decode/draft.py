"""A draft model (vLLM's `"model": PATH` speculative method): a smaller or cheaper checkpoint with
the target's tokenizer proposes k tokens, one forward pass each, for the target to verify.

Its KV cache is its own, paged in blocks of its own: a sequence gets draft blocks only when it
starts speculating (`reserve`), and gives them back when it finishes or is preempted
(`release`), so sequences that never speculate take none of its memory. Each entry's chunk
starts where the draft's cache stops being valid for the sequence (the Speculator tracks it),
so each step first catches the draft up on the tokens it has not seen and samples the first
proposal at the end of that chunk.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from nanovllm.contract.step import ScheduledSequence
from nanovllm.model.architectures.registry import ModelConfig, family_of
from nanovllm.model.layers.kernel_needs import kernel_needs
from nanovllm.runner.kv_cache import KVCache
from nanovllm.runner.seq_state import SequenceState
from nanovllm.runner.spec_decode.rejection_sampler import draw
from nanovllm.runner.spec_decode.verify import target_probs


@dataclass(slots=True)
class Proposal:
    token_ids: list[int]
    probs: np.ndarray | None  # [len(token_ids), vocab] the draft sampled from; None if greedy


class DraftModel:
    def __init__(self, cfg: ModelConfig, weights, num_blocks: int, block_size: int,
                 kv_cache_dtype: str = "float32"):
        self.cfg, self.weights, self.block_size = cfg, weights, block_size
        self.forward = family_of(cfg).forward
        family_of(cfg).compile_kernels(kernel_needs(weights, kv_cache_dtype, cfg))  # (its own: int8)
        self.kv_cache = KVCache(cfg, num_blocks, block_size, kv_cache_dtype)
        self.free_blocks = list(range(num_blocks - 1, -1, -1))  # popped from the end
        self.tables: dict[int, list[int]] = {}  # seq id -> its draft blocks, in position order

    def reserve(self, seq_id: int, num_positions: int) -> bool:
        """Blocks for the sequence's first `num_positions` positions; False (nothing taken)
        when the free blocks cannot cover them."""
        table = self.tables.get(seq_id, [])
        need = -(-num_positions // self.block_size) - len(table)
        if need > len(self.free_blocks):
            return False
        if need > 0:
            self.tables[seq_id] = table + [self.free_blocks.pop() for _ in range(need)]
        return True

    def release(self, seq_id: int) -> None:
        self.free_blocks.extend(reversed(self.tables.pop(seq_id, [])))

    def propose(self, entries: list[ScheduledSequence], states: list[SequenceState],
                num_proposals: list[int], prepare, timed=None) -> list[Proposal]:
        """k = num_proposals[i] tokens for each entry (whose token_ids are the draft's catch-up
        chunk, from the draft's `start`; one of k = 0 only computes its chunk, and does not
        sample); `prepare` lays a step out as the target's runner does; `timed(rows, seconds)`
        hears of each pass."""
        out = [Proposal([], [] if not s.params.greedy else None) for s in states]
        live = list(range(len(entries)))
        step = entries
        for _ in range(max([1, *num_proposals])):
            inputs = prepare(step)
            clock = time.perf_counter()
            logits = self.forward(self.weights, self.cfg, inputs.token_ids, inputs.positions,
                                  self.kv_cache.layers, inputs.attention, inputs.logit_rows)
            if timed:
                timed(len(inputs.token_ids), time.perf_counter() - clock)
            order = {id(e): r for r, e in enumerate(inputs.sampling)}
            nxt, next_live = [], []
            for i, e in zip(live, step):
                if not num_proposals[i]:
                    continue
                row = logits[order[id(e)]]
                token = self._choose(row, states[i], out[i])
                out[i].token_ids.append(token)
                if len(out[i].token_ids) < num_proposals[i]:
                    nxt.append(ScheduledSequence(e.seq_id, [token], e.start + len(e.token_ids),
                                                 e.block_table, True, 0))
                    next_live.append(i)
            live, step = next_live, nxt
            if not step:
                break
        for p in out:
            if p.probs is not None:
                p.probs = np.stack(p.probs) if p.probs else None
        return out

    @staticmethod
    def _choose(logits: np.ndarray, state: SequenceState, proposal: Proposal) -> int:
        """Greedy requests get the draft's argmax; sampled ones a draw from the draft's own
        distribution (temperature and filters as the request asks), kept for the acceptance
        rule, from the sequence's generator."""
        if state.params.greedy:
            return int(logits.argmax())
        probs = target_probs(logits[None, :].copy(), state)[0]
        proposal.probs.append(probs)
        return draw(probs, state.rng)
