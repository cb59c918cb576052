"""Speculative decoding's engine side: which decodes speculate, how many proposals each may
have, and the counters vLLM's spec-decode metrics report.

A step speculates only while fewer than `disable_by_batch_size` sequences are running (vLLM's
rule; from there on a step is compute-bound and verifying proposals only adds work). A decode
then gets up to k proposals, never more than its request can still use (max_tokens, the
context length) nor than the step's token budget leaves. Structured-output requests never speculate: their
grammar would have to walk every proposal, and roll back on rejection. N-gram proposals are
made here, from the sequence's own tokens; a draft model's in the runner.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nanovllm.contract.step import DraftWork
from nanovllm.runner.spec_decode.ngram import propose_ngram
from nanovllm.sequence import Sequence
from nanovllm.values.speculative import SpeculativeConfig


@dataclass(slots=True)
class SpecPlan:
    spec_token_ids: list[int]   # n-gram proposals
    num_draft_tokens: int       # or how many the draft model makes
    draft: DraftWork | None
    num_slots: int = field(init=False)  # query rows and KV slots the proposals take

    def __post_init__(self) -> None:
        self.num_slots = len(self.spec_token_ids) + self.num_draft_tokens


NO_PLAN = SpecPlan([], 0, None)


class Speculator:
    def __init__(self, config: SpeculativeConfig, max_model_len: int):
        self.config, self.max_model_len = config, max_model_len

    def plan(self, seq: Sequence, budget: int) -> SpecPlan:
        """Proposals for decoding `seq` this step, in at most `budget` more tokens."""
        if seq.params.structured is not None:
            return NO_PLAN
        c = self.config
        k = min(c.num_speculative_tokens, budget, self.max_model_len - seq.num_tokens)
        if seq.params.max_tokens is not None:  # the target adds one token after the proposals
            k = min(k, seq.params.max_tokens - seq.num_output_tokens - 1)
        if k <= 0:
            return NO_PLAN
        if c.method == "ngram":
            return SpecPlan(propose_ngram(seq.token_ids, k, c.prompt_lookup_min,
                                          c.prompt_lookup_max, self.max_model_len), 0, None)
        start = seq.num_draft_computed
        return SpecPlan([], k, DraftWork(start, seq.token_ids[start:seq.num_tokens]))


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
