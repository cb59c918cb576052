"""LLMEngine: requests in, one scheduled model step at a time, RequestOutputs out.

`add` queues a request the input processor checked (`processor.process`: the rules in
`input_processor`; `add_request` does both, as vLLM's does). `step` is schedule -> run ->
update -> outputs: the scheduler describes the step once (nanovllm/contract/step.py), the model
runner runs it, and the engine maps the runner's output back to the sequences by seq id,
appending each sampled token, turning it into text and applying the finish rules (at the end of
this file). `abort_request` retires a request at once.
The engine is single-threaded; the server drives it from one thread. Scheduling, blocks and
sampling know nothing of the architecture; only loading (`model_loading`) and the runner do.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import time
from collections import deque
from dataclasses import dataclass, replace

import numpy as np

from nanovllm.beam_search import BeamGroup
from nanovllm.block_manager import BlockManager
from nanovllm.config import DEFAULT_KV_CACHE_BYTES, EngineConfig
from nanovllm.contract.step import (
    ModelRunnerOutput,
    ScheduledSequence,
    SchedulerOutput,
    TokenLogprobs,
)
from nanovllm.input_processor import InputProcessor
from nanovllm.model.architectures import family_of
from nanovllm.model.quant import dequantize_weights
from nanovllm.model.trace import ForwardTrace, trace_forward
from nanovllm.model_loading import load_draft, load_model
from nanovllm.pooling import pooling_config_of
from nanovllm.pooling_input import PoolingInput
from nanovllm.runner.kv_cache import kv_bytes_per_block
from nanovllm.runner.model_runner import NativeModelRunner
from nanovllm.runner.pooling_runner import PoolingRunner
from nanovllm.runner.spec_decode.draft import DraftModel
from nanovllm.scheduler import Scheduler
from nanovllm.sequence import Request, Sequence
from nanovllm.snapshot import EngineSnapshot, StepStats, take_snapshot
from nanovllm.speculation import SpecDecodeStats, Speculator
from nanovllm.step_record import StepRecord, StepRecorder
from nanovllm.tokenizer import IncrementalDetokenizer, Tokenizer, find_stop, held_back
from nanovllm.values.errors import InvalidRequestError, QueueFullError
from nanovllm.values.inputs import PromptType
from nanovllm.values.outputs import (
    CompletionOutput,
    Logprob,
    PoolingOutput,
    PoolingRequestOutput,
    RequestMetrics,
    RequestOutput,
)
from nanovllm.values.request import EngineRequest
from nanovllm.values.sampling_params import SamplingParams

logger = logging.getLogger("nanovllm")

Finish = tuple[str, int | str | None]  # (finish_reason, stop_reason)


@dataclass(slots=True)
class EngineStats:
    num_running: int
    num_waiting: int
    num_free_blocks: int
    num_total_blocks: int
    kv_cache_usage: float
    prompt_tokens_total: int
    generation_tokens_total: int
    num_preemptions_total: int
    prefix_cache_queries: int
    prefix_cache_hits: int
    num_aborted_total: int
    num_waiting_seqs: int   # sequences waiting to be admitted (the queue max_waiting_seqs bounds)
    num_steps_total: int    # steps that ran the model: the clock scheduling is measured in
    # Steps by the tokens they computed: counts per ITERATION_TOKENS_BUCKETS bound (the last
    # for larger steps), and their total.
    iteration_tokens: tuple[int, ...] = ()
    iteration_tokens_sum: int = 0
    # The KV cache's configuration (vLLM's vllm:cache_config_info).
    block_size: int = 0
    kv_cache_dtype: str = ""
    enable_prefix_caching: bool = False
    # Speculative decoding (vLLM's vllm:spec_decode_*; empty per-position counts: not configured).
    spec_decode_num_drafts: int = 0
    spec_decode_num_draft_tokens: int = 0
    spec_decode_num_accepted_tokens: int = 0
    spec_decode_accepted_per_position: tuple[int, ...] = ()


# vLLM's bounds for vllm:iteration_tokens_total (tokens per engine step).
ITERATION_TOKENS_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)


STEP_HISTORY = 120  # steps kept for the engine view's strip of recent steps


class LLMEngine:
    def __init__(self, config: EngineConfig):
        self.config = config
        loaded = load_model(config)
        self.model_path, self.model_config, self.is_dummy = loaded.path, loaded.config, loaded.is_dummy
        self.architecture = loaded.architecture  # config.json's, e.g. LlamaForCausalLM
        cfg = self.model_config
        self.tokenizer = Tokenizer(config.tokenizer or loaded.path, cfg.eos_token_id)
        # A pooling model (embeddings, scores) instead of a generating one: see pooling.py.
        self.pooling = pooling_config_of(config, loaded)
        self.max_model_len = config.max_model_len or cfg.n_positions
        if self.pooling is not None and self.pooling.max_seq_length:
            self.max_model_len = min(self.max_model_len, self.pooling.max_seq_length)
        self.eos_token_ids = cfg.eos_token_ids  # each ends a sequence (generation_config may list several)
        if self.max_model_len > cfg.n_positions:
            raise ValueError(f"max_model_len={self.max_model_len} exceeds the model's "
                             f"n_positions={cfg.n_positions}")
        spec = config.speculative_config
        draft = (load_draft(config, loaded, self.max_model_len)
                 if spec is not None and spec.method == "draft_model" else None)
        # A draft's KV cache is paged under the same block tables: each block costs both.
        bytes_per_block = sum(kv_bytes_per_block(m.config, config.block_size,
                                                 config.kv_cache_dtype)
                              for m in (loaded, draft) if m is not None)
        self.num_kv_blocks = config.num_kv_blocks or max(1, (
            config.kv_cache_memory_bytes or DEFAULT_KV_CACHE_BYTES) // bytes_per_block)
        if self.pooling is not None:  # blocks only count its sequences: it keeps no KV
            self.num_kv_blocks = config.num_kv_blocks or config.max_num_seqs * (
                -(-self.max_model_len // config.block_size))
        # Token ids a request may use: the model embeds them and the tokenizer decodes them.
        self.vocab_size = min(cfg.vocab_size, self.tokenizer.vocab_size)
        pooling_input = None if self.pooling is None else PoolingInput(
            self.tokenizer, self.vocab_size, self.max_model_len, self.pooling, cfg.n_embd,
            getattr(cfg, "is_classifier", False))
        self.processor = InputProcessor(self.tokenizer, self.vocab_size, self.max_model_len,
                                        config.block_size, self.num_kv_blocks,
                                        config.max_waiting_seqs, pooling_input)
        self.block_manager = BlockManager(self.num_kv_blocks, config.block_size,
                                          config.enable_prefix_caching)
        self.scheduler = Scheduler(self.block_manager, config.max_num_seqs,
                                   # a pooling sequence is computed whole: one always fits
                                   max(config.max_num_batched_tokens, self.max_model_len
                                       if self.pooling else 0),
                                   Speculator(spec, self.max_model_len) if spec else None)
        draft_model = None if draft is None else DraftModel(
            draft.config, draft.weights, self.num_kv_blocks, config.block_size,
            config.kv_cache_dtype)
        if self.pooling is not None:
            self.runner = PoolingRunner(cfg, loaded.weights, self.pooling)
        else:
            self.runner = NativeModelRunner(cfg, loaded.weights, self.num_kv_blocks,
                                            config.block_size, config.kv_cache_dtype, config.seed,
                                            draft_model)
        self.spec_stats = SpecDecodeStats([0] * (spec.num_speculative_tokens if spec else 0))
        self.requests: dict[str, Request] = {}
        self._seq_ids = itertools.count()
        self.prompt_tokens_total = self.generation_tokens_total = self.num_aborted_total = 0
        self.num_steps = 0  # steps that ran the model: the clock scheduling is measured in
        # Step-by-step mode: the next step leaves a StepRecord in last_record (then it is off).
        self.record_next_step = False
        self.last_record: StepRecord | None = None
        self.iteration_tokens = [0] * (len(ITERATION_TOKENS_BUCKETS) + 1)
        self.iteration_tokens_sum = 0
        self.last_step = StepStats()
        self.recent_steps: deque[StepStats] = deque(maxlen=STEP_HISTORY)
        logger.info("Loaded %s from %s: %s, %.1fM parameters (%d layers, d=%d, vocab %d, "
                    "max_model_len %d)", loaded.architecture, self.model_path,
                    "RANDOM weights (dummy checkpoint)" if self.is_dummy else "pretrained weights",
                    cfg.num_params / 1e6, cfg.n_layer, cfg.n_embd, cfg.vocab_size,
                    self.max_model_len)
        if self.pooling is not None:
            logger.info("pooling model: %s pooling%s, no KV cache",
                        "+".join(self.pooling.modes),
                        ", normalized" if self.pooling.normalize else "")
        else:
            logger.info("KV cache: %d blocks of %d tokens (%d tokens, %.0f MiB, %s)",
                        self.num_kv_blocks, config.block_size,
                        self.num_kv_blocks * config.block_size,
                        self.runner.kv_cache.nbytes / 2**20, self.runner.kv_cache.dtype)
        if spec is not None:
            off = spec.disable_by_batch_size
            logger.info("speculative decoding: %s, k=%d, %s%s",
                        "n-gram lookup" if draft is None else f"draft {draft.path}",
                        spec.num_speculative_tokens,
                        f"off from {off} running sequences on" if off else "never switched off",
                        "" if draft_model is None else
                        f"; the KV budget is split target {self.runner.kv_cache.nbytes / 2**20:.0f}"
                        f" MiB / draft {draft_model.kv_cache.nbytes / 2**20:.0f} MiB")

    # ---- requests in -------------------------------------------------------------------------
    def add_request(self, request_id: str, prompt: PromptType, params: SamplingParams, *,
                    final_only: bool = False) -> None:
        """Check and queue a request (vLLM's offline form): `add(processor.process(...))`."""
        self.add(self.processor.process(request_id, prompt, params, final_only=final_only))

    def add(self, request: EngineRequest) -> None:
        """Queue a checked request; step() returns its cumulative output after every step that
        adds a token, or with `final_only` only once it finishes. Only what depends on the
        engine's live state is checked here: a free request id, room in the waiting queue."""
        request_id, params = request.request_id, request.params
        if (request.pooling is None) != (self.pooling is None):
            raise InvalidRequestError(
                "This model is served for embeddings and scores: it does not generate text."
                if self.pooling else "This model generates text; it makes no embeddings or "
                "scores unless started with --runner pooling.", "model")
        if request_id in self.requests:
            raise ValueError(f"request_id {request_id!r} is already in use")
        if self.scheduler.num_waiting_seqs + params.n > self.config.max_waiting_seqs:
            raise QueueFullError(
                f"The server is busy: {self.scheduler.num_waiting_seqs} sequences are waiting and "
                f"this request's {params.n} would pass the limit of "
                f"{self.config.max_waiting_seqs}. Please retry later.")
        state = Request(request_id, request.prompt, request.prompt_token_ids, params,
                        final_only=request.final_only or request.beam is not None,
                        pooling=request.pooling, token_type_ids=request.token_type_ids,
                        metrics=RequestMetrics(time.perf_counter()))
        if params.prompt_logprobs is not None:
            state.prompt_logprobs = [None] * len(request.prompt_token_ids)
        if request.beam is not None:  # one sequence computes the prompt, then forks into beams
            state.beam = BeamGroup.start(request.beam, self.eos_token_ids)
        state.seqs = [self._new_sequence(state, index)
                      for index in range(1 if state.beam else params.n)]
        # Only now, with nothing left that can fail, does the request enter the engine.
        for seq in state.seqs:
            self.scheduler.add(seq)
        self.requests[request_id] = state

    def _new_sequence(self, request: Request, index: int) -> Sequence:
        params = request.params
        with_logprobs = params.logprobs is not None
        return Sequence(next(self._seq_ids), request, index, list(request.prompt_token_ids),
                        detok=IncrementalDetokenizer(self.tokenizer, params.skip_special_tokens),
                        logprobs=[] if with_logprobs else None,
                        cumulative_logprob=0.0 if with_logprobs else None)

    def abort_request(self, request_id: str | list[str]) -> None:
        for rid in [request_id] if isinstance(request_id, str) else request_id:
            request = self.requests.pop(rid, None)
            if request is None:
                continue
            self.num_aborted_total += 1
            for seq in request.seqs:
                if not seq.is_finished:
                    self.scheduler.finish(seq)
                    seq.finish_reason = "abort"

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    # ---- one step ----------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """Schedule -> run -> update -> outputs of the requests that advanced."""
        start, preemptions = time.perf_counter(), self.scheduler.num_preemptions
        recorder = self._start_recording() if self.record_next_step else None
        step = self.scheduler.schedule()
        if recorder:
            recorder.scheduled(step)
        result = self.runner.run(step)  # also when empty: it learns of new and finished sequences
        self.runner.keep_last_run = False
        if not step.scheduled:
            return []
        seqs = self.scheduler.update_from_output(step)
        advanced = self._update(seqs, step, result)
        self._record_step(step, seqs, result, start, self.scheduler.num_preemptions - preemptions)
        if recorder:
            recorder.ran(*self.runner.last_run)
            self.last_record = recorder.finish(self.num_steps, result.sampled)
        return self._outputs(advanced)

    def _start_recording(self) -> StepRecorder:
        self.record_next_step, self.runner.keep_last_run = False, True
        return StepRecorder(self.scheduler, self.tokenizer.decode_token)

    def _update(self, seqs: list[Sequence], step: SchedulerOutput, result: ModelRunnerOutput
                ) -> list[Request]:
        """Maps the runner's output back to the sequences: prompt logprobs, then each sampled
        token. Returns the requests that got a token, in the step's order."""
        advanced: dict[str, Request] = {}
        beam_groups: dict[str, Request] = {}
        for seq, scheduled in zip(seqs, step.scheduled):
            if scheduled.prompt_logprob_ids:
                first = scheduled.start + 1
                lps = result.prompt_logprobs[seq.seq_id]
                seq.request.prompt_logprobs[first:first + len(lps)] = map(self._logprob_dict, lps)
            if seq.seq_id in result.pooled:  # computed whole: done
                self._finish_pooled(seq, result.pooled[seq.seq_id])
                advanced[seq.request.request_id] = seq.request
            elif scheduled.num_beam_candidates and scheduled.sample:
                seq.request.beam.offers[seq.seq_id] = result.beam_offers[seq.seq_id]
                beam_groups[seq.request.request_id] = seq.request
            elif scheduled.sample:
                self._append_tokens(seq, scheduled, result.sampled[seq.seq_id],
                                    result.logprobs.get(seq.seq_id))
                advanced[seq.request.request_id] = seq.request
        for request in beam_groups.values():
            if self._advance_beams(request):
                advanced[request.request_id] = request
        return list(advanced.values())

    def _finish_pooled(self, seq: Sequence, pooled: np.ndarray) -> None:
        seq.request.pooled = pooled
        seq.request.metrics.first_token_time = seq.request.metrics.last_token_time = (
            time.perf_counter())
        self.prompt_tokens_total += seq.num_prompt_tokens
        seq.finish_reason = "stop"
        self.scheduler.finish(seq)

    def _advance_beams(self, request: Request) -> bool:
        """Once every beam has offered: the beam rule picks the next beams, each becoming a fork
        of its parent plus one token (blocks shared, pruned ones freed). Returns whether the
        search ended (its sequences are then finished)."""
        group, beams = request.beam, request.seqs
        if not group.ready(beams):
            return False
        if beams[0].num_output_tokens == 0:  # the request's prompt is processed
            self.prompt_tokens_total += request.seqs[0].num_prompt_tokens
        self.generation_tokens_total += len(beams)
        step = group.advance(beams)
        if group.scorer.done:
            for beam in beams:
                beam.finish_reason = "length"
                self.scheduler.finish(beam)
            return True
        while len(beams) < len(step.live):  # the first step: the prompt's sequence forks
            child = self._new_sequence(request, len(beams))
            beams.append(child)
            self.scheduler.add_beam(child)
        parents = [beams[c.parent] for c in step.live]
        tokens = [p.token_ids + [c.token] for p, c in zip(parents, step.live)]
        self.block_manager.refork(beams, parents)
        for beam, token_ids in zip(beams, tokens):
            beam.token_ids = token_ids
        return False

    def _append_tokens(self, seq: Sequence, scheduled: ScheduledSequence, tokens: list[int],
                       logprobs: list[TokenLogprobs] | None) -> None:
        """Appends the step's tokens one by one, each through the finish rules (the rest are
        dropped once one finishes the sequence). A speculating decode's rejected proposals
        are then rolled back by the scheduler."""
        for i, token in enumerate(tokens):
            self._append_token(seq, token, logprobs[i] if logprobs else None)
            if seq.is_finished:
                break
        if scheduled.num_proposals:
            self.spec_stats.record(scheduled.num_proposals, len(tokens) - 1)
            if not seq.is_finished:
                self.scheduler.update_speculated(seq, scheduled, len(tokens) - 1)

    def _record_step(self, step: SchedulerOutput, seqs: list[Sequence],
                     result: ModelRunnerOutput, start: float, preemptions: int) -> None:
        """The step in the engine view's strip and the metrics: its size (in
        vllm:iteration_tokens_total), and when its requests were first scheduled (the end of
        their time in the queue)."""
        decodes = sum(len(s.token_ids) == 1 and s.num_output_tokens > 0 for s in step.scheduled)
        speculating = [s for s in step.scheduled if s.num_proposals]
        proposed = sum(s.num_proposals for s in speculating)
        accepted = sum(len(result.sampled[s.seq_id]) - 1 for s in speculating)
        self.last_step = StepStats(step.num_tokens - decodes - proposed, decodes,
                                   time.perf_counter() - start, len(step.scheduled), preemptions,
                                   proposed, accepted)
        self.recent_steps.append(self.last_step)
        self.num_steps += 1
        self.iteration_tokens[bisect.bisect_left(ITERATION_TOKENS_BUCKETS, step.num_tokens)] += 1
        self.iteration_tokens_sum += step.num_tokens
        for seq in seqs:
            if seq.request.metrics.first_scheduled_time is None:
                seq.request.metrics.first_scheduled_time = start

    def _append_token(self, seq: Sequence, token: int, logprobs: TokenLogprobs | None) -> None:
        seq.token_ids.append(token)
        timing = seq.request.metrics
        timing.last_token_time = time.perf_counter()
        if timing.first_token_time is None:
            timing.first_token_time = timing.last_token_time
        self.generation_tokens_total += 1
        if seq.num_output_tokens == 1 and seq.index == 0:  # the request's prompt is processed
            self.prompt_tokens_total += seq.num_prompt_tokens
        if logprobs is not None:
            seq.logprobs.append(self._logprob_dict(logprobs))
            seq.cumulative_logprob += logprobs.logprobs[0]
        finish = finish_on_token(seq, token, self.eos_token_ids, self.max_model_len)
        # A stop token's own text is left out, like a stop string's.
        drop_last = finish is not None and finish[0] == "stop" and not seq.params.include_stop_str_in_output
        old_len = len(seq.text)
        if not drop_last:
            seq.text += seq.detok.step(token)
        if finish is not None:
            seq.text += seq.detok.flush()
        finish = finish_on_text(seq, old_len) or finish
        if finish is not None:
            seq.finish_reason, seq.stop_reason = finish
            self.scheduler.finish(seq)

    def _outputs(self, advanced: list[Request]) -> list[RequestOutput]:
        """Each advanced request's output (a final_only one's once it finishes); a finished
        request leaves the engine."""
        for request in advanced:
            if request.finished:
                del self.requests[request.request_id]
        return [self._request_output(r) for r in advanced if r.finished or not r.final_only]

    def _logprob_dict(self, lp: TokenLogprobs) -> dict[int, Logprob]:
        return {t: Logprob(v, r, self.tokenizer.decode_token(t))
                for t, v, r in zip(lp.token_ids, lp.logprobs, lp.ranks)}

    def _request_output(self, request: Request) -> RequestOutput | PoolingRequestOutput:
        if request.pooling is not None:
            return PoolingRequestOutput(request.request_id, PoolingOutput(request.pooled),
                                        request.prompt_token_ids, True, replace(request.metrics))
        if request.beam is not None:
            return self._beam_output(request)
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

    def _beam_output(self, request: Request) -> RequestOutput:
        """A finished beam search: its hypotheses, best first, as the request's outputs (the
        text leaves out an EOS, as vLLM's does)."""
        outputs = []
        for index, h in enumerate(request.beam.scorer.hypotheses):
            tokens, lps = h.payload
            ended_on_eos = h.finish_reason == "stop" and tokens[-1] in self.eos_token_ids
            text_ids = tokens[:-1] if ended_on_eos else tokens
            logprobs = [{t: Logprob(lp, rank, self.tokenizer.decode_token(t))}
                        for t, (lp, rank) in zip(tokens, lps)]
            outputs.append(CompletionOutput(index, self.tokenizer.decode(text_ids), list(tokens),
                                            h.candidate.cum_logprob, logprobs, h.finish_reason))
        return RequestOutput(request.request_id, request.prompt, request.prompt_token_ids, None,
                             outputs, request.finished,
                             max(s.num_cached_tokens for s in request.seqs),
                             replace(request.metrics) if request.finished else None)

    def snapshot(self) -> EngineSnapshot:
        """Blocks, queues and recent steps as plain values; only from the thread that steps."""
        return take_snapshot(self.scheduler, list(self.recent_steps), self.num_steps)

    def attention_weights(self, token_ids: list[int]) -> np.ndarray:
        """[n_layer, n_head, T, T]: how much each token attends to each earlier one, by the
        reference path. Any thread may call it: it reads only the weights, which never change
        (the caller bounds T: this is a whole forward pass without a KV cache)."""
        # int8/bfloat16 weights are widened for the call (float32 ones pass through as they are).
        return family_of(self.model_config).reference.attention_weights(
            dequantize_weights(self.runner.weights), self.model_config, np.asarray(token_ids))


    def trace_forward(self, token_ids: list[int]) -> ForwardTrace:
        """One forward pass layer by layer (model/trace.py), by the reference path, on the
        caller's thread like attention_weights."""
        return trace_forward(dequantize_weights(self.runner.weights), self.model_config,
                             np.asarray(token_ids), ref=family_of(self.model_config).reference)

    def get_stats(self) -> EngineStats:
        bm, sched, spec = self.block_manager, self.scheduler, self.spec_stats
        # Requests, not sequences: a request with n samples counts once, as running if any runs.
        # Every unfinished request is running or waiting (step() drops the finished ones), so
        # only the running sequences are looked at: the server asks after every step.
        num_running = len({s.request for s in sched.running})
        return EngineStats(
            num_running=num_running, num_waiting=len(self.requests) - num_running,
            num_free_blocks=bm.num_free_blocks, num_total_blocks=bm.num_blocks,
            kv_cache_usage=1.0 - bm.num_free_blocks / bm.num_blocks,
            prompt_tokens_total=self.prompt_tokens_total,
            generation_tokens_total=self.generation_tokens_total,
            num_preemptions_total=sched.num_preemptions,
            prefix_cache_queries=sched.prefix_cache_queries,
            prefix_cache_hits=sched.prefix_cache_hits,
            num_aborted_total=self.num_aborted_total, num_waiting_seqs=sched.num_waiting_seqs,
            num_steps_total=self.num_steps,
            iteration_tokens=tuple(self.iteration_tokens),
            iteration_tokens_sum=self.iteration_tokens_sum,
            block_size=self.config.block_size, kv_cache_dtype=self.config.kv_cache_dtype,
            enable_prefix_caching=self.config.enable_prefix_caching,
            spec_decode_num_drafts=spec.num_drafts,
            spec_decode_num_draft_tokens=spec.num_draft_tokens,
            spec_decode_num_accepted_tokens=spec.num_accepted_tokens,
            spec_decode_accepted_per_position=tuple(spec.accepted_per_position))


# ---- when a sequence is done -----------------------------------------------------------------
# In vLLM's order: the context length always; nothing else before min_tokens; then EOS (unless
# ignore_eos), a stop token id, a stop string, and max_tokens.
def finish_on_token(seq: Sequence, token: int, eos_token_ids: tuple[int, ...],
                    max_model_len: int) -> Finish | None:
    """`eos_token_ids`: every id that ends a sequence as EOS (generation_config.json may list several)."""
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
