"""Output processing: from what the model runner produced in a step to the requests' outputs.

For each scheduled sequence that sampled, its tokens are appended one by one, each turned into
text and put through the finish rules (at the end of this file, in vLLM's order); a sequence
that finishes is retired by the scheduler, and its later tokens are dropped. A group's members
(sequence.SequenceGroup) offer their candidates instead; once all have, the group's policy
says which parent each next member forks from, and the forks share their parents' blocks. Then
each request that advanced gets its cumulative `RequestOutput`.

This module is the only writer of a sequence's tokens and output state (text, logprobs,
finish); it creates the sequences too.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import replace

from nanovllm.contract.step import ModelRunnerOutput, SchedulerOutput, TokenLogprobs
from nanovllm.scheduler import Scheduler
from nanovllm.sequence import Request, Sequence
from nanovllm.stats import StatsCollector
from nanovllm.tokenizer import IncrementalDetokenizer, Tokenizer, find_stop, held_back
from nanovllm.values.outputs import (
    CompletionOutput,
    Logprob,
    PoolingOutput,
    PoolingRequestOutput,
    RequestOutput,
)

Finish = tuple[str, int | str | None]  # (finish_reason, stop_reason)


class OutputProcessor:
    def __init__(self, tokenizer: Tokenizer, eos_token_ids: tuple[int, ...], max_model_len: int,
                 scheduler: Scheduler, stats: StatsCollector):
        self.tokenizer, self.eos_token_ids = tokenizer, eos_token_ids
        self.max_model_len, self.scheduler, self.stats = max_model_len, scheduler, stats
        self._seq_ids = itertools.count()

    def new_sequence(self, request: Request, index: int) -> Sequence:
        params = request.params
        with_logprobs = params.logprobs is not None
        return Sequence(next(self._seq_ids), request, index, list(request.prompt_token_ids),
                        detok=IncrementalDetokenizer(self.tokenizer, params.skip_special_tokens),
                        logprobs=[] if with_logprobs else None,
                        cumulative_logprob=0.0 if with_logprobs else None)

    def process(self, step: SchedulerOutput, seqs: list[Sequence], result: ModelRunnerOutput
                ) -> list[RequestOutput]:
        """Prompt logprobs, then each sampled token (or a group member's candidates); returns
        the outputs of the requests that advanced, in the step's order (a final_only request's
        only once it finishes)."""
        advanced: dict[str, Request] = {}
        groups: dict[str, Request] = {}
        for seq, scheduled in zip(seqs, step.scheduled):
            request = seq.request
            if scheduled.prompt_logprob_ids:
                first = scheduled.start + 1
                lps = result.prompt_logprobs[seq.seq_id]
                request.prompt_logprobs[first:first + len(lps)] = map(self._logprob_dict, lps)
            if seq.seq_id in result.pooled:  # a pooling sequence, computed whole: done
                self._finish_pooled(seq, result.pooled[seq.seq_id])
                advanced[request.request_id] = request
                continue
            if not scheduled.sample:
                continue
            if scheduled.num_candidates:
                request.group.offer(seq, result.candidates[seq.seq_id])
                groups[request.request_id] = request
            else:
                self._append_tokens(seq, result.sampled[seq.seq_id],
                                    result.logprobs.get(seq.seq_id))
                advanced[request.request_id] = request
        for request in groups.values():
            if self._advance_group(request):
                advanced[request.request_id] = request
        return [self._request_output(r) for r in advanced.values()
                if r.finished or not r.final_only]

    def abort(self, request: Request) -> None:
        for seq in request.seqs:
            if not seq.is_finished:
                seq.finish_reason = "abort"
                self.scheduler.finish(seq)

    def _append_tokens(self, seq: Sequence, tokens: list[int],
                       logprobs: list[TokenLogprobs] | None) -> None:
        """Each token in turn through the finish rules: the rest are dropped once one
        finishes the sequence."""
        for i, token in enumerate(tokens):
            self._append_token(seq, token, logprobs[i] if logprobs else None)
            if seq.is_finished:
                self.scheduler.finish(seq)
                return

    def _append_token(self, seq: Sequence, token: int, logprobs: TokenLogprobs | None) -> None:
        seq.token_ids.append(token)
        timing = seq.request.metrics
        timing.last_token_time = time.perf_counter()
        if timing.first_token_time is None:
            timing.first_token_time = timing.last_token_time
        first = seq.num_output_tokens == 1 and seq.index == 0  # the request's prompt is processed
        self.stats.count_tokens(seq.num_prompt_tokens if first else 0, 1)
        if logprobs is not None:
            seq.logprobs.append(self._logprob_dict(logprobs))
            seq.cumulative_logprob += logprobs.logprobs[0]
        finish = finish_on_token(seq, token, self.eos_token_ids, self.max_model_len)
        # A stop token's own text is left out, like a stop string's.
        drop_last = (finish is not None and finish[0] == "stop"
                     and not seq.params.include_stop_str_in_output)
        old_len = len(seq.text)
        if not drop_last:
            seq.text += seq.detok.step(token)
        if finish is not None:
            seq.text += seq.detok.flush()
        finish = finish_on_text(seq, old_len) or finish
        if finish is not None:
            seq.finish_reason, seq.stop_reason = finish

    def _finish_pooled(self, seq: Sequence, pooled) -> None:
        seq.request.pooled = pooled
        timing = seq.request.metrics
        timing.first_token_time = timing.last_token_time = time.perf_counter()
        self.stats.count_tokens(seq.num_prompt_tokens, 0)
        seq.finish_reason = "stop"
        self.scheduler.finish(seq)

    def _advance_group(self, request: Request) -> bool:
        """Once every member has offered: the group's policy picks the next members, each
        becoming a fork of its parent plus one token (blocks shared, the pruned ones' freed).
        Returns whether the group ended (its sequences are then finished)."""
        group, members = request.group, request.seqs
        if not group.ready(members):
            return False
        first = members[0].num_output_tokens == 0  # the request's prompt is processed
        self.stats.count_tokens(members[0].num_prompt_tokens if first else 0, len(members))
        forks = group.advance(members)
        if forks is None:
            for seq in members:
                seq.finish_reason = "length"
                self.scheduler.finish(seq)
            return True
        while len(members) < len(forks):  # the first step: the prompt's sequence forks
            child = self.new_sequence(request, len(members))
            members.append(child)
            self.scheduler.add_fork(child)
        parents = [members[parent] for parent, _ in forks]
        tokens = [p.token_ids + [token] for p, (_, token) in zip(parents, forks)]
        self.scheduler.block_manager.share(members, parents)
        for seq, token_ids in zip(members, tokens):
            seq.token_ids = token_ids
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
def finish_on_token(seq: Sequence, token: int, eos_token_ids: tuple[int, ...],
                    max_model_len: int) -> Finish | None:
    """`eos_token_ids`: every id that ends a sequence as EOS (generation_config may list several)."""
    p = seq.params
    if seq.num_tokens >= max_model_len:
        return ("length", None)
    if seq.num_output_tokens < p.min_tokens:
        return None
    if token in eos_token_ids and not p.ignore_eos:
        return ("stop", None)
    if token in p.stop_token_ids:
        return ("stop", token)
    if p.max_tokens is not None and seq.num_output_tokens >= p.max_tokens:
        return ("length", None)
    return None


def finish_on_text(seq: Sequence, old_len: int) -> Finish | None:
    """Ends `seq` at the first stop string that ends in its new text (after `old_len`
    characters), trimming the text there."""
    p = seq.params
    if not p.stop or seq.num_output_tokens < p.min_tokens:
        return None
    hit = find_stop(seq.text, p.stop, old_len)
    if hit is None:
        return None
    index, stop = hit
    seq.text = seq.text[:index + (len(stop) if p.include_stop_str_in_output else 0)]
    return ("stop", stop)
