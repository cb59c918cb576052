"""Speculative decoding's one seam: the model runner asks this `Speculator` to propose tokens for
the lookahead slots the scheduler reserved, and to verify them against the target's logits.

Which decodes get slots, and how many, is `lookahead`, the rule the scheduler is built with:
the step's k (policy.py), the one of most tokens per second from the running requests'
acceptance so far, position by position, and the measured wall time of whole steps proposing
k against the plain ones beside them (step_costs.py), so k = 0 (a plain decode) wherever no k
pays. The engine tells its runner how long each step took (`step_took`), and the runner hands
the seconds to `timed_step`: a step of decodes only is the price of its k when regular, and
otherwise (the draft catching up, a request's capped last steps) still counts towards what a
probe cost. A decode's k is never more than num_speculative_tokens, than the request can still use
(max_tokens, the context length) nor than the step's token budget leaves; none at all from
disable_by_batch_size running sequences on (vLLM's rule, when set: such a step has no rule,
`step_lookahead`, and is the plain step, its decodes never asked) and for structured-output
requests (their grammar would have to walk every proposal, and roll back on rejection). A
seeded sampled request decides from its own acceptance and the draft's weight bytes only, never
from timings: its k, and so its samples, repeat from run to run. With `"adaptive": false` every
decode gets the most slots (vLLM's fixed k).

Proposals come from n-gram lookup in the sequence's own tokens (ngram.py) or from a draft model
(draft.py); both read the tokens this module keeps for each live sequence (its prompt, then
every token the runner produced for it). A draft model's cache is filled lazily: it holds each
sequence's positions below `draft_valid[seq_id]`, in blocks of its own taken when the sequence
starts speculating (nothing before, nothing once it is preempted or done). A sequence that does
not speculate costs the draft nothing, neither passes nor memory; one that starts first has the
draft compute what its cache lacks, in chunks that share the step's token budget (a step of
catching up proposes nothing), and only where the tokens the request may still make repay it
and the draft's blocks have room. Counters are vLLM's
spec-decode metrics, with the decisions (`chosen`: decodes that chose each k).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nanovllm.contract.step import ModelRunnerOutput, ScheduledSequence, SchedulerOutput
from nanovllm.runner.sampler import took
from nanovllm.runner.seq_state import SequenceState
from nanovllm.runner.spec_decode.draft import DraftModel, Proposal
from nanovllm.runner.spec_decode.ngram import compile_ngram, propose_ngram
from nanovllm.runner.spec_decode.policy import (
    POOL_DECAY,
    PRIOR_ALPHA,
    Acceptance,
    StepPolicy,
    choose_k,
    expected_tokens_by_position,
    pays_to_catch_up,
)
from nanovllm.runner.spec_decode.step_costs import VERIFY_PRIOR, CostLine, StepCosts
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
                 draft: DraftModel | None = None, draft_share: float = 0.0):
        """`draft_share`: the draft's weight bytes against the target's, its cost until timed."""
        self.config, self.max_model_len, self.draft = config, max_model_len, draft
        self.stats = SpecDecodeStats([0] * config.num_speculative_tokens)
        self.chosen = [0] * (config.num_speculative_tokens + 1)  # decodes that chose each k
        self.tokens: dict[int, list[int]] = {}    # seq id -> its prompt and produced tokens
        self.draft_valid: dict[int, int] = {}     # seq id -> positions the draft's cache holds
        self.acceptance: dict[int, Acceptance] = {}  # seq id -> its proposals' fate so far
        self.pooled = Acceptance()                # every request's, fading: a newcomer's prior
        self.policy = StepPolicy(StepCosts(draft_share + VERIFY_PRIOR, draft_share))
        self.draft_passes = CostLine() if draft else None  # what the draft's rows cost
        if draft is None:
            compile_ngram()  # now, not in the first speculating step
        # This step's draft-only catch-up chunks (seq id -> positions) and the budget left them.
        self._catch_up: dict[int, int] = {}
        self._catch_up_left: int | None = None
        self._step_k: int | None = None  # the k the policy chose for the step being scheduled
        # The acceptance heard of so far (counted), and the mean E(k) last computed from it.
        self._evidence = 0
        self._expected: tuple[tuple[int, int], list[float]] | None = None
        # (decodes, k, regular) of the last step, if it was decodes only
        self._timing: tuple[int, int, bool] | None = None
        self._untimed = False  # the step being scheduled has a decode whose k was capped

    # ---- the scheduler's rule --------------------------------------------------------------
    def step_lookahead(self, num_running: int):
        """The rule for a step of `num_running` sequences: `lookahead` at that size, or None
        when the step cannot speculate (disable_by_batch_size), so that the scheduler asks
        nothing of its decodes and the step is a plain one."""
        if not self.config.speculates(num_running):
            return None
        return lambda seq, budget: self.lookahead(seq, num_running, budget)

    def lookahead(self, seq, num_running: int, budget: int) -> int:
        """Slots for decoding `seq` (a core Sequence) this step, in at most `budget` tokens."""
        c, p = self.config, seq.params
        if p.structured is not None:
            return 0
        k = min(c.num_speculative_tokens, budget, self.max_model_len - seq.num_tokens)
        remaining = None
        if p.max_tokens is not None:  # the target adds one token after the proposals
            remaining = p.max_tokens - seq.num_output_tokens
            k = min(k, remaining - 1)
        if k < c.num_speculative_tokens:
            # A request about to end: its last steps (finishing it included) are not the
            # price of any k, and the step is not timed.
            self._untimed = True
        if k <= 0:
            return 0
        judged = None  # what says whether catching the draft up pays, when adaptive
        if c.adaptive:
            own = self.acceptance.get(seq.seq_id) or Acceptance()
            costs = self.policy.costs
            if p.seed is not None and not p.greedy:  # nothing timed: its k must repeat
                k = choose_k(own.optimistic(PRIOR_ALPHA), costs.prior_per_token, k)
            else:
                k = min(k, self._k_of_step(num_running))
                if k:
                    probing = self.policy.probing(num_running)  # chosen for the prior's promise
                    cost = costs.prior_per_token if probing else costs.per_token(num_running, k)
                    judged = (own.optimistic(self.pooled.rate(PRIOR_ALPHA)), cost, remaining,
                              num_running)
        if k and self.draft is not None:
            k = self._catch_up_first(seq, k, budget, judged)
        self.chosen[k] += 1
        return k

    def _k_of_step(self, num_running: int) -> int:
        """The policy's k for this step, chosen at its first decode from the mean expected
        tokens of the live requests (those without proposals yet at the pooled rate)."""
        if self._step_k is None:
            key = (num_running, self._evidence)
            if self._expected is None or self._expected[0] != key:  # else as last step's
                self._expected = key, self._mean_expected(num_running)
            self._step_k = self.policy.choose(num_running, self._expected[1])
        return self._step_k

    def _mean_expected(self, num_running: int) -> list[float]:
        """The mean E(k), k = 0..num_speculative_tokens, over `num_running` live requests."""
        k_max = self.config.num_speculative_tokens
        prior = self.pooled.rates([PRIOR_ALPHA] * k_max)
        # At their estimates, not optimistically: the probes do the exploring, and a step of
        # many requests would add up every request's bonus.
        each = [expected_tokens_by_position(a.rates(prior)) for a in self.acceptance.values()]
        each += [expected_tokens_by_position(prior)] * max(0, num_running - len(each))
        return [sum(e[k] for e in each) / len(each) for k in range(k_max + 1)]

    def _catch_up_first(self, seq, k: int, budget: int, judged: tuple | None) -> int:
        """k, or 0 when the draft's cache must first catch up on this sequence and cannot in
        this step's budget (it computes a chunk now, without proposing) or, `judged` (alpha,
        cost, tokens the request may still make, running), those tokens would not repay it."""
        if not self.draft.reserve(seq.seq_id, seq.num_tokens + k):
            return 0
        missing = seq.num_tokens - self.draft_valid.get(seq.seq_id, 0)  # the decode's included
        if missing <= 2:  # the usual: its last token, and the last kept proposal
            return k
        if judged is not None:
            alpha, cost, remaining, num_running = judged
            if not pays_to_catch_up(alpha, cost, k, remaining,
                                    self._catch_up_cost(missing, num_running)):
                return 0
        if self._catch_up_left is None:  # the first sequence asking in this step
            self._catch_up_left = budget
        room = min(self._catch_up_left, budget - k)
        if missing <= room:
            self._catch_up_left -= missing
            return k
        chunk = min(self._catch_up_left, missing - 1)
        if chunk > 0:
            self._catch_up[seq.seq_id] = chunk
            self._catch_up_left -= chunk
        return 0

    def _catch_up_cost(self, rows: int, batch_size: int) -> float:
        """The draft computing `rows` missing positions of one sequence, in that sequence's share
        of a plain step of `batch_size` decodes; 0 until both were timed (catching up is how
        the draft's rows get timed)."""
        plain = self.policy.costs.plain_seconds(batch_size)
        if not plain or not self.draft_passes.measured:
            return 0.0
        # Its rows ride on a draft pass the batch makes anyway: only their own cost counts.
        return self.draft_passes.fit()[1] * rows / plain * batch_size

    # ---- the runner's step -------------------------------------------------------------------
    def start(self, step: SchedulerOutput) -> None:
        """The sequences announced, preempted and retired since the last step."""
        self._step_k, self._timing = None, None
        for new in step.new_seqs:
            self.tokens[new.seq_id] = list(new.prompt_token_ids)
        for seq_id in step.preempted_seq_ids:
            self._drop_draft(seq_id)
        for seq_id in step.finished_seq_ids:
            self.tokens.pop(seq_id, None)
            if self.acceptance.pop(seq_id, None) is not None:
                self._evidence += 1
            self._drop_draft(seq_id)
        if not step.scheduled:
            self._end_catch_up()

    def _drop_draft(self, seq_id: int) -> None:
        self.draft_valid.pop(seq_id, None)
        if self.draft is not None:
            self.draft.release(seq_id)

    def propose(self, scheduled: list[ScheduledSequence], states: dict[int, SequenceState],
                prepare) -> dict[int, Proposal]:
        """Proposals for the decodes with lookahead slots (some may get none), by seq id;
        `prepare` lays a step out as the target's runner does (for the draft model)."""
        asked = [e for e in scheduled if e.num_lookahead]
        catching_up = [e for e in scheduled if e.seq_id in self._catch_up and not e.num_lookahead]
        self._timing = None
        if self.config.speculates(len(scheduled)) and all(len(e.token_ids) == 1
                                                          for e in scheduled):  # decodes only
            regular = not self._untimed and self._regular(asked, catching_up)
            k = max((e.num_lookahead for e in scheduled), default=0)
            self._timing = (len(scheduled), k, regular)
        self._untimed = False
        if not asked and not catching_up:
            self._end_catch_up()
            return {}
        if self.draft is None:
            c = self.config
            found = {e.seq_id: propose_ngram(self.tokens[e.seq_id], e.num_lookahead,
                                             c.prompt_lookup_min, c.prompt_lookup_max,
                                             self.max_model_len) for e in asked}
            for e in asked:
                if not found[e.seq_id]:  # the step it asked for makes one token: a rejection
                    self._learn(e.seq_id, e.num_lookahead, 0)
            return {seq_id: Proposal(ids, None) for seq_id, ids in found.items() if ids}
        return self._draft(asked, catching_up, states, prepare)

    def _regular(self, asked: list[ScheduledSequence],
                 catching_up: list[ScheduledSequence]) -> bool:
        """Whether a step of decodes only has its time be the price of its k: nothing for the
        draft to catch up on (beyond the decode's token and the last kept proposal)."""
        if catching_up:
            return False
        return self.draft is None or all(
            e.start + 1 - self.draft_valid.get(e.seq_id, 0) <= 2 for e in asked)

    def timed_step(self, seconds: float) -> None:
        """The engine's whole last step took `seconds`: the policy learns from a step of decodes
        only (the price of its k if regular, else what a probe spent)."""
        if self._timing is None:  # not a step of decodes only: the next one pairs with none
            self.policy.costs.interrupt()
        else:
            decodes, k, regular = self._timing
            self.policy.timed(decodes, k, seconds, regular)
            self._timing = None

    def _draft(self, asked: list[ScheduledSequence], catching_up: list[ScheduledSequence],
               states: dict[int, SequenceState], prepare) -> dict[int, Proposal]:
        """The draft's proposals for `asked`, each after the draft computed what its cache lacks
        up to the decode's token; `catching_up` only computes this step's chunk."""
        chunks, tables = [], self.draft.tables
        for e in asked:
            start = self.draft_valid.get(e.seq_id, 0)
            chunks.append(ScheduledSequence(e.seq_id, self.tokens[e.seq_id][start:e.start + 1],
                                            start, tables[e.seq_id], True, 0))
        for e in catching_up:
            start = self.draft_valid.get(e.seq_id, 0)
            end = start + self._catch_up[e.seq_id]
            chunks.append(ScheduledSequence(e.seq_id, self.tokens[e.seq_id][start:end], start,
                                            tables[e.seq_id], False, 0))
            self.draft_valid[e.seq_id] = end
        self._end_catch_up()
        everyone = asked + catching_up
        found = self.draft.propose(chunks, [states[e.seq_id] for e in everyone],
                                   [e.num_lookahead for e in everyone], prepare, self._timed)
        return {e.seq_id: p for e, p in zip(asked, found)}

    def _timed(self, rows: int, seconds: float) -> None:
        """A draft pass: what the draft's rows cost (catching up)."""
        self.draft_passes.record(rows, seconds)

    def _end_catch_up(self) -> None:
        self._catch_up.clear()
        self._catch_up_left = None

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
            self._record(e.seq_id, k, len(tokens) - 1)
            if self.draft is not None:
                # The draft's cache reached the decode's position plus its k - 1 fed-back
                # proposals; it stays valid up to the last kept one.
                self.draft_valid[e.seq_id] = e.start + 1 + min(len(tokens) - 1, k - 1)
            row += k + 1

    def _record(self, seq_id: int, num_proposed: int, num_kept: int) -> None:
        self.stats.record(num_proposed, num_kept)
        self._learn(seq_id, num_proposed, num_kept)

    def _learn(self, seq_id: int, num_proposed: int, num_kept: int) -> None:
        """The request's acceptance, and the engine's pooled one, hear of a step's proposals."""
        self._evidence += 1
        self.acceptance.setdefault(seq_id, Acceptance()).record(num_proposed, num_kept)
        self.pooled.decay(POOL_DECAY)
        self.pooled.record(num_proposed, num_kept)

    def took(self, out: ModelRunnerOutput) -> None:
        """Every token the step produced joins its sequence's tokens."""
        for seq_id, tokens in out.sampled.items():
            history = self.tokens.get(seq_id)
            if history is not None:
                history.extend(tokens)

    def summary(self, batch_size: int) -> dict:
        """What the rule sees at `batch_size` running decodes: the pooled acceptance (failed
        n-gram lookups counted as rejections), each k's step cost against a plain step (index k,
        1.0 at 0) and whether it was timed or stands in, and the decodes that chose each k."""
        costs, k_max = self.policy.costs, self.config.num_speculative_tokens
        return {"acceptance": self.pooled.rate(PRIOR_ALPHA, 0.0) if self.pooled.decided else None,
                "step_cost": costs.ratios(batch_size, k_max),
                "timed": [costs.measured(batch_size, k) for k in range(k_max + 1)], "chosen": list(self.chosen)}
