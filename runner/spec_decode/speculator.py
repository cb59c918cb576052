"""Speculative decoding's one seam: the model runner asks this `Speculator` to propose tokens for
the lookahead slots the scheduler reserved, and to verify them against the target's logits.

Which decodes get slots is `lookahead`, the rule the scheduler is built with: a step speculates
only while fewer than `disable_by_batch_size` sequences are running (vLLM's rule; from there on
a step is compute-bound and verifying proposals only adds work). A decode then gets up to k
slots, never more than its request can still use (max_tokens, the context length) nor than the
step's token budget leaves. Structured-output requests never speculate: their grammar would
have to walk every proposal, and roll back on rejection.

Proposals come from n-gram lookup in the sequence's own tokens (ngram.py) or from a draft model
(draft.py); both read the tokens this module keeps for each live sequence (its prompt, then
every token the runner produced for it). A draft model's cache is paged under the target's
block tables; it holds each sequence's positions below `draft_valid[seq_id]` (nothing once the
sequence is preempted), so each step first catches it up. Counters are vLLM's spec-decode
metrics.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nanovllm.contract.step import ModelRunnerOutput, ScheduledSequence, SchedulerOutput
from nanovllm.runner.sampler import took
from nanovllm.runner.seq_state import SequenceState
from nanovllm.runner.spec_decode.draft import DraftModel, Proposal
from nanovllm.runner.spec_decode.ngram import propose_ngram
from nanovllm.runner.spec_decode.verify import verify
from nanovllm.values.speculative import SpeculativeConfig


@dataclass(slots=True)
class SpecDecodeStats:
    """vLLM's spec-decode counters: drafts (speculating sequence-steps), proposed and accepted
    tokens, and accepted tokens by proposal position (one count per position up to k)."""
    accepted_per_position: list[int]
    num_drafts: int = 0
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0

    def record(self, num_proposed: int, num_accepted: int) -> None:
        self.num_drafts += 1
        self.num_draft_tokens += num_proposed
        self.num_accepted_tokens += num_accepted
        for j in range(num_accepted):
            self.accepted_per_position[j] += 1

    @property
    def mean_acceptance_length(self) -> float:
        """Tokens per speculating step: the accepted proposals and the target's own token."""
        return 1.0 + self.num_accepted_tokens / self.num_drafts if self.num_drafts else 0.0


class Speculator:
    def __init__(self, config: SpeculativeConfig, max_model_len: int,
                 draft: DraftModel | None = None):
        self.config, self.max_model_len, self.draft = config, max_model_len, draft
        self.stats = SpecDecodeStats([0] * config.num_speculative_tokens)
        self.tokens: dict[int, list[int]] = {}    # seq id -> its prompt and produced tokens
        self.draft_valid: dict[int, int] = {}     # seq id -> positions the draft's cache holds

    def lookahead(self, seq, num_running: int, budget: int) -> int:
        """Slots for decoding `seq` (a core Sequence) this step, in at most `budget` tokens."""
        c, p = self.config, seq.params
        if not c.speculates(num_running) or p.structured is not None:
            return 0
        k = min(c.num_speculative_tokens, budget, self.max_model_len - seq.num_tokens)
        if p.max_tokens is not None:  # the target adds one token after the proposals
            k = min(k, p.max_tokens - seq.num_output_tokens - 1)
        return max(k, 0)

    def start(self, step: SchedulerOutput) -> None:
        """The sequences announced, preempted and retired since the last step."""
        for new in step.new_seqs:
            self.tokens[new.seq_id] = list(new.prompt_token_ids)
        for seq_id in step.preempted_seq_ids:
            self.draft_valid.pop(seq_id, None)
        for seq_id in step.finished_seq_ids:
            self.tokens.pop(seq_id, None)
            self.draft_valid.pop(seq_id, None)

    def propose(self, scheduled: list[ScheduledSequence], states: dict[int, SequenceState],
                prepare) -> dict[int, Proposal]:
        """Proposals for the decodes with lookahead slots (some may get none), by seq id;
        `prepare` lays a step out as the target's runner does (for the draft model)."""
        asked = [e for e in scheduled if e.num_lookahead]
        if not asked:
            return {}
        if self.draft is None:
            c = self.config
            found = {e.seq_id: propose_ngram(self.tokens[e.seq_id], e.num_lookahead,
                                             c.prompt_lookup_min, c.prompt_lookup_max,
                                             self.max_model_len) for e in asked}
            return {seq_id: Proposal(ids, None) for seq_id, ids in found.items() if ids}
        chunks = []
        for e in asked:  # the draft first computes what its cache lacks, up to the decode's token
            start = self.draft_valid.get(e.seq_id, 0)
            chunks.append(ScheduledSequence(e.seq_id, self.tokens[e.seq_id][start:e.start + 1],
                                            start, e.block_table, True, 0))
        proposals = self.draft.propose(chunks, [states[e.seq_id] for e in asked],
                                       [e.num_lookahead for e in asked], prepare)
        return {e.seq_id: p for e, p in zip(asked, proposals)}

    def verify(self, logits: np.ndarray, verifying: list[ScheduledSequence],
               proposals: dict[int, Proposal], states: dict[int, SequenceState],
               eos_token_ids: list[int], out: ModelRunnerOutput) -> None:
        """Each speculating decode's accepted proposals and the target's own token, into `out`
        (`logits`: 1 + len(proposal) rows each, in `verifying`'s order)."""
        row = 0
        for e in verifying:
            proposal, state = proposals[e.seq_id], states[e.seq_id]
            k = len(proposal.token_ids)
            tokens, logprobs = verify(logits[row:row + k + 1], state, e.num_output_tokens,
                                      proposal.token_ids, proposal.probs, eos_token_ids)
            for token in tokens:
                took(state, token)
            out.sampled[e.seq_id] = tokens
            if logprobs:
                out.logprobs[e.seq_id] = logprobs
            out.lookahead_filled[e.seq_id] = k
            self.stats.record(k, len(tokens) - 1)
            if self.draft is not None:
                # The draft's cache reached the decode's position plus its k - 1 fed-back
                # proposals; it stays valid up to the last kept one.
                self.draft_valid[e.seq_id] = e.start + 1 + min(len(tokens) - 1, k - 1)
            row += k + 1

    def took(self, out: ModelRunnerOutput) -> None:
        """Every token the step produced joins its sequence's tokens."""
        for seq_id, tokens in out.sampled.items():
            history = self.tokens.get(seq_id)
            if history is not None:
                history.extend(tokens)
