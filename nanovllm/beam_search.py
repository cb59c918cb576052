"""Beam search: its rule, and its policy inside the engine.

A beam search runs inside continuous batching as a group of sequences (sequence.SequenceGroup):
its live beams are its request's sequences, each a decode of its own in the step, sharing their
blocks copy-on-write. Each step every beam offers its 2k most likely next tokens (the runner's
`candidates`, scored as transformers scores a beam); once all have offered, `BeamGroup.advance`
applies the rule below and says which parent each next beam forks from and with which token;
the scheduler makes the forks (`Scheduler.fork`: each beam takes its parent's tokens and blocks,
plus its token). The scheduler runs a group's beams all or none. Finished, the request's outputs are its kept
hypotheses (`BeamGroup.output`).

The rule, as a pure function of scores: which beams live on, which are finished.

The rule is transformers' (`generate(num_beams=k, do_sample=False)` with its defaults:
early_stopping=False, length_penalty=1.0), step for step:
- every live beam offers its 2k best next tokens; of all the offers, the 2k with the best
  cumulative logprob are the candidates, best first;
- a candidate that ends in EOS, or reaches max_tokens, is finished; the first k non-finished
  candidates are the next live beams;
- of the first k candidates, the finished ones become hypotheses scored
  cum_logprob / len(generated, EOS included) ** length_penalty; the k best hypotheses are kept;
- the search ends when no beam lives, or when k hypotheses are kept and the best live beam,
  scored at its current length, does not beat the worst of them.
The answer is the k hypotheses, best score first.

vLLM's LLM.beam_search differs, and we do not follow it there: it keeps every EOS candidate of
every beam as a hypothesis (not only those among the k best), never stops early, and scores
cum_logprob / len(prompt + output, EOS excluded) ** length_penalty.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from nanovllm.block_manager import blocks_needed
from nanovllm.values.beam_search_params import BeamSearchParams
from nanovllm.values.outputs import (
    BeamSearchOutput,
    BeamSearchSequence,
    CompletionOutput,
    Logprob,
    RequestOutput,
)


def beam_blocks_needed(num_prompt_tokens: int, max_tokens: int, width: int, block_size: int) -> int:
    """The most KV blocks a beam search can hold at once: every beam shares the prompt's full
    blocks; past them, in the worst case, the k beams hold blocks of their own to the end."""
    shared = num_prompt_tokens // block_size
    return shared + width * (blocks_needed(num_prompt_tokens + max_tokens, block_size) - shared)


def hypothesis_score(cum_logprob: float, num_tokens: int, length_penalty: float) -> float:
    """What finished beams are ranked by (transformers'): `num_tokens` generated, EOS included."""
    return cum_logprob / num_tokens ** length_penalty


@dataclass(slots=True)
class Candidate:
    parent: int          # which live beam it extends (its index in the step's beams)
    token: int
    logprob: float
    cum_logprob: float
    rank: int = 1        # the token's rank in its beam's distribution


@dataclass(slots=True)
class Hypothesis:
    """A finished beam: its parent's tokens, then `last` (known once the step materialises it)."""
    candidate: Candidate
    score: float
    finish_reason: str   # "stop" (EOS) or "length"
    payload: object = None  # what the caller attaches: the beam's tokens and logprobs


@dataclass(slots=True)
class BeamRound:
    """One round of the search (every live beam offered; one engine step each, or more when
    a beam waits for the others)."""
    live: list[Candidate]                # the next live beams, best first
    new_hypotheses: list[Hypothesis]     # those that entered the kept set this round


@dataclass(slots=True)
class BeamScorer:
    """One request's search: its kept hypotheses and whether it has ended."""
    width: int
    max_tokens: int
    eos_token_ids: tuple[int, ...]       # each ends a beam; () with ignore_eos
    length_penalty: float = 1.0
    hypotheses: list[Hypothesis] = field(default_factory=list)  # at most `width`, best first
    done: bool = False

    def next_round(self, cum_logprobs: list[float], offers: list[tuple[list[int], list[float]]],
                   num_generated: int) -> BeamRound:
        """One round: `cum_logprobs[b]` is live beam b's score, `offers[b]` its best next tokens
        and their logprobs, `num_generated` how many tokens each beam has (all the same)."""
        k, length = self.width, num_generated + 1
        candidates = sorted(
            (Candidate(b, t, lp, cum + lp, rank)
             for b, (cum, (ids, lps)) in enumerate(zip(cum_logprobs, offers))
             for rank, (t, lp) in enumerate(zip(ids, lps), start=1)),
            key=lambda c: -c.cum_logprob)[:2 * k]
        at_limit = length >= self.max_tokens
        finished = [at_limit or c.token in self.eos_token_ids for c in candidates]
        live = [c for c, f in zip(candidates, finished) if not f][:k]
        new = [Hypothesis(c, hypothesis_score(c.cum_logprob, length, self.length_penalty),
                          "length" if at_limit and c.token not in self.eos_token_ids else "stop")
               for c, f in zip(candidates[:k], finished[:k]) if f]
        kept = sorted(self.hypotheses + new, key=lambda h: -h.score)[:k]
        new = [h for h in new if any(h is kh for kh in kept)]
        self.hypotheses = kept
        self.done = not live or (
            len(kept) == k
            and hypothesis_score(live[0].cum_logprob, length, self.length_penalty) <= kept[-1].score)
        return BeamRound(live, new)


def beam_search_output(out: RequestOutput, length_penalty: float) -> BeamSearchOutput:
    """A finished beam request's output in vLLM's LLM.beam_search shape (its outputs are the
    beams, best first)."""
    return BeamSearchOutput([
        BeamSearchSequence(out.prompt_token_ids + c.token_ids, c.logprobs or [],
                           c.cumulative_logprob, c.text, c.finish_reason,
                           hypothesis_score(c.cumulative_logprob, len(c.token_ids), length_penalty))
        for c in out.outputs])


@dataclass(slots=True, eq=False)
class BeamGroup:
    """A beam request's search inside the engine (a sequence.SequenceGroup). Its sequences
    (`Request.seqs`) are its live beams, in the scorer's order; they advance together, once each
    has offered its candidates for the current length (a beam that computed early waits for
    the others)."""
    params: BeamSearchParams
    scorer: BeamScorer
    eos_token_ids: tuple[int, ...]
    cum_logprobs: list[float] = field(default_factory=lambda: [0.0])
    # Per live beam, (logprob, rank) of each token it generated.
    token_logprobs: list[list[tuple[float, int]]] = field(default_factory=lambda: [[]])
    offers: dict[int, tuple[list[int], list[float]]] = field(default_factory=dict)  # by seq id

    @classmethod
    def start(cls, params: BeamSearchParams, eos_token_ids: tuple[int, ...]) -> BeamGroup:
        return cls(params, BeamScorer(params.beam_width, params.max_tokens,
                                      () if params.ignore_eos else eos_token_ids,
                                      params.length_penalty), eos_token_ids)

    @property
    def width(self) -> int:
        return self.params.beam_width

    @property
    def num_candidates(self) -> int:
        return self.params.num_candidates

    def offer(self, seq, candidates: tuple[list[int], list[float]]) -> None:
        self.offers[seq.seq_id] = candidates

    def ready(self, beams: list) -> bool:
        """Every beam is running with all its tokens computed and has offered for them (an
        offer made before a preemption still holds: the beam's tokens have not changed)."""
        return all(b.seq_id in self.offers and b.num_computed_tokens == b.num_tokens
                   and b.block_table for b in beams)

    def advance(self, beams: list) -> list[tuple[int, int]] | None:
        """The next beams, each as (its parent's index in `beams`, its token), best first; or
        None when the search has ended."""
        scored = self._score(beams)
        return None if self.scorer.done else [(c.parent, c.token) for c in scored.live]

    def _score(self, beams: list) -> BeamRound:
        """Scores this round's offers; the new hypotheses carry their (tokens, logprobs)."""
        step = self.scorer.next_round(self.cum_logprobs, [self.offers[b.seq_id] for b in beams],
                                      beams[0].num_output_tokens)
        self.offers.clear()
        for h in step.new_hypotheses:
            c = h.candidate
            h.payload = (beams[c.parent].output_token_ids + [c.token],
                         self.token_logprobs[c.parent] + [(c.logprob, c.rank)])
        self.cum_logprobs = [c.cum_logprob for c in step.live]
        self.token_logprobs = [self.token_logprobs[c.parent] + [(c.logprob, c.rank)]
                               for c in step.live]
        return step

    def output(self, request, decode, decode_token) -> RequestOutput:
        """The search's hypotheses, best first, as the request's outputs (the text leaves out an
        EOS, as vLLM's does); `decode`, `decode_token`: the tokenizer's."""
        outputs = []
        for index, h in enumerate(self.scorer.hypotheses):
            tokens, lps = h.payload
            ended_on_eos = h.finish_reason == "stop" and tokens[-1] in self.eos_token_ids
            logprobs = [{t: Logprob(lp, rank, decode_token(t))}
                        for t, (lp, rank) in zip(tokens, lps)]
            outputs.append(CompletionOutput(index, decode(tokens[:-1] if ended_on_eos else tokens),
                                            list(tokens), h.candidate.cum_logprob, logprobs,
                                            h.finish_reason))
        return RequestOutput(request.request_id, request.prompt, request.prompt_token_ids, None,
                             outputs, request.finished,
                             max(s.num_cached_tokens for s in request.seqs),
                             replace(request.metrics) if request.finished else None)
