"""Output processing: from what the model runner produced in a step to the requests' outputs.

`process` reads a step's outputs and decides what follows (sequence.StepDecisions), which the
scheduler applies; `outputs` then builds the cumulative `RequestOutput` of each request that
advanced. A sampled token goes through the finish rules (at the end of this file, in vLLM's
order) and into the sequence's text; once one finishes the sequence, the later ones are
dropped. A group's members (sequence.SequenceGroup) offer their candidates instead; once all
have, the group's policy says which parent each next member forks from.

This module writes a sequence's output state (text, logprobs) and nothing else of it; it makes
the sequences too.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import replace

from nanovllm.contract.step import ModelRunnerOutput, SchedulerOutput, TokenLogprobs
from nanovllm.sequence import Finish, Fork, Request, Sequence, StepDecisions
from nanovllm.stats import StatsCollector
from nanovllm.tokenizer import IncrementalDetokenizer, Tokenizer, find_stop, held_back
from nanovllm.values.outputs import (
    CompletionOutput,
    Logprob,
    PoolingOutput,
    PoolingRequestOutput,
    RequestOutput,
)
from nanovllm.values.sampling_params import SamplingParams


class OutputProcessor:
    def __init__(self, tokenizer: Tokenizer, eos_token_ids: tuple[int, ...], max_model_len: int,
                 stats: StatsCollector):
        self.tokenizer, self.eos_token_ids = tokenizer, eos_token_ids
        self.max_model_len, self.stats = max_model_len, stats
        self._seq_ids = itertools.count()

    def new_sequence(self, request: Request, index: int) -> Sequence:
        params = request.params
        with_logprobs = params.logprobs is not None
        return Sequence(next(self._seq_ids), request, index, list(request.prompt_token_ids),
                        detok=IncrementalDetokenizer(self.tokenizer, params.skip_special_tokens),
                        logprobs=[] if with_logprobs else None,
                        cumulative_logprob=0.0 if with_logprobs else None)

    def process(self, step: SchedulerOutput, seqs: list[Sequence], result: ModelRunnerOutput
                ) -> StepDecisions:
        """Prompt logprobs, then each sampled token (or a group member's candidates): what the
        scheduler is to apply, and the requests that advanced, in the step's order."""
        decided = StepDecisions()
        advanced: dict[str, Request] = {}
        groups: dict[str, Request] = {}
        for seq, scheduled in zip(seqs, step.scheduled):
            request = seq.request
            if scheduled.prompt_logprob_ids:
                first = scheduled.start + 1
                lps = result.prompt_logprobs[seq.seq_id]
                request.prompt_logprobs[first:first + len(lps)] = map(self._logprob_dict, lps)
            if seq.seq_id in result.pooled:  # a pooling sequence, computed whole: done
                decided.finished.append((seq, self._pooled(seq, result.pooled[seq.seq_id])))
                advanced[request.request_id] = request
                continue
            if not scheduled.sample:
                continue
            if scheduled.num_candidates:
                request.group.offer(seq, result.candidates[seq.seq_id])
                groups[request.request_id] = request
            else:
                tokens, finish = self._take_tokens(seq, result.sampled[seq.seq_id],
                                                   result.logprobs.get(seq.seq_id))
                decided.tokens.append((seq, tokens))
                if finish is not None:
                    decided.finished.append((seq, finish))
                advanced[request.request_id] = request
        for request in groups.values():
            if self._advance_group(request, decided):
                advanced[request.request_id] = request
        decided.advanced = list(advanced.values())
        return decided

    def outputs(self, decided: StepDecisions) -> list[RequestOutput]:
        """Once the scheduler applied `decided`: the outputs of the requests that advanced (a
        final_only request's only once it finishes)."""
        return [self._request_output(r) for r in decided.advanced
                if r.finished or not r.final_only]

    def _take_tokens(self, seq: Sequence, tokens: list[int],
                     logprobs: list[TokenLogprobs] | None) -> tuple[list[int], Finish | None]:
        """Each token in turn through the finish rules: those after the one that finishes the
        sequence are dropped. Returns the tokens it takes, and its finish if one did."""
        for i, token in enumerate(tokens):
            finish = self._take_token(seq, token, seq.num_output_tokens + i + 1,
                                      logprobs[i] if logprobs else None)
            if finish is not None:
                return tokens[:i + 1], finish
        return tokens, None

    def _take_token(self, seq: Sequence, token: int, num_output: int,
                    logprobs: TokenLogprobs | None) -> Finish | None:
        """`token` into `seq`'s output; `num_output`: its output tokens, this one included (the
        scheduler appends them once the step's decisions are made)."""
        timing = seq.request.metrics
        timing.last_token_time = time.perf_counter()
        if timing.first_token_time is None:
            timing.first_token_time = timing.last_token_time
        first = num_output == 1 and seq.index == 0  # the request's prompt is processed
        self.stats.count_tokens(seq.num_prompt_tokens if first else 0, 1)
        if logprobs is not None:
            seq.logprobs.append(self._logprob_dict(logprobs))
            seq.cumulative_logprob += logprobs.logprobs[0]
        finish = finish_on_token(seq, token, num_output, self.eos_token_ids, self.max_model_len)
        # A stop token's own text is left out, like a stop string's.
        drop_last = (finish is not None and finish[0] == "stop"
                     and not seq.params.include_stop_str_in_output)
        old_len = len(seq.text)
        if not drop_last:
            seq.text += seq.detok.step(token)
        if finish is not None:
            seq.text += seq.detok.flush()
        hit = finish_on_text(seq.text, seq.params, num_output, old_len)
        if hit is not None:  # a stop string: the text is cut at it
            seq.text, finish = hit
        return finish

    def _pooled(self, seq: Sequence, pooled) -> Finish:
        seq.request.pooled = pooled
        timing = seq.request.metrics
        timing.first_token_time = timing.last_token_time = time.perf_counter()
        self.stats.count_tokens(seq.num_prompt_tokens, 0)
        return ("stop", None)

    def _advance_group(self, request: Request, decided: StepDecisions) -> bool:
        """Once every member has offered: the group's policy picks the next members, each a
        fork of its parent plus one token (`decided.forks`). Returns whether the group ended
        (its members then finish)."""
        group, members = request.group, request.seqs
        if not group.ready(members):
            return False
        first = members[0].num_output_tokens == 0  # the request's prompt is processed
        self.stats.count_tokens(members[0].num_prompt_tokens if first else 0, len(members))
        forks = group.advance(members)
        if forks is None:
            decided.finished += [(seq, ("length", None)) for seq in members]
            return True
        children = [self.new_sequence(request, i) for i in range(len(members), len(forks))]
        decided.forks.append(Fork(request, [parent for parent, _ in forks],
                                  [token for _, token in forks], children))
        return False

    def _logprob_dict(self, lp: TokenLogprobs) -> dict[int, Logprob]:
        return {t: Logprob(v, r, self.tokenizer.decode_token(t))
                for t, v, r in zip(lp.token_ids, lp.logprobs, lp.ranks)}

    def _request_output(self, request: Request) -> RequestOutput | PoolingRequestOutput:
        if request.pooling is not None:
            return PoolingRequestOutput(request.request_id, PoolingOutput(request.pooled),
                                        request.prompt_token_ids, True, replace(request.metrics))
        if request.group is not None:
            return request.group.output(request, self.tokenizer.decode,
                                        self.tokenizer.decode_token)
        outputs = []
        for seq in request.seqs:
            text = seq.text
            if not seq.is_finished and seq.params.stop:
                text = text[:len(text) - held_back(text, seq.params.stop)]
            outputs.append(CompletionOutput(
                seq.index, text, seq.output_token_ids, seq.cumulative_logprob,
                list(seq.logprobs) if seq.logprobs is not None else None,
                seq.finish_reason, seq.stop_reason))
        prompt_logprobs = list(request.prompt_logprobs) if request.prompt_logprobs else None
        return RequestOutput(request.request_id, request.prompt, request.prompt_token_ids,
                             prompt_logprobs, outputs, request.finished,
                             max(s.num_cached_tokens for s in request.seqs),
                             replace(request.metrics) if request.finished else None)


# ---- when a sequence is done -----------------------------------------------------------------
# In vLLM's order: the context length always; nothing else before min_tokens; then EOS (unless
# ignore_eos), a stop token id, a stop string, and max_tokens.
def finish_on_token(seq: Sequence, token: int, num_output: int, eos_token_ids: tuple[int, ...],
                    max_model_len: int) -> Finish | None:
    """Whether `token`, `seq`'s `num_output`-th output token, ends it. `eos_token_ids`: every id
    that ends a sequence as EOS (generation_config may list several)."""
    p = seq.params
    if seq.num_prompt_tokens + num_output >= max_model_len:
        return ("length", None)
    if num_output < p.min_tokens:
        return None
    if token in eos_token_ids and not p.ignore_eos:
        return ("stop", None)
    if token in p.stop_token_ids:
        return ("stop", token)
    if p.max_tokens is not None and num_output >= p.max_tokens:
        return ("length", None)
    return None


def finish_on_text(text: str, p: SamplingParams, num_output: int, old_len: int
                   ) -> tuple[str, Finish] | None:
    """The first stop string that ends in `text` past its first `old_len` characters (the new
    text): the text cut there, and the finish; None if there is none."""
    if not p.stop or num_output < p.min_tokens:
        return None
    hit = find_stop(text, p.stop, old_len)
    if hit is None:
        return None
    index, stop = hit
    return text[:index + (len(stop) if p.include_stop_str_in_output else 0)], ("stop", stop)
