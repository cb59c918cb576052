"""LLMEngine: requests in, one scheduled model step at a time, RequestOutputs out.

`add` queues a request the input processor checked (`processor.process`: the rules in
`input_processor`; `add_request` does both, as vLLM's does). `step` is schedule -> run ->
process outputs: the scheduler describes the step once (nanovllm/contract/step.py), the model
runner runs it, the scheduler records what it computed; the output processor
(output_processor.py) turns the runner's tokens into text and decides what follows (tokens
taken, sequences finished, a group's forks), the scheduler applies it, and the output processor
builds the requests' outputs. `abort_request` retires a request at once. The runner hears how
long each step took (`step_took`: scheduling to outputs), for whatever it tunes by time.

The engine is single-threaded; the server drives it from one thread. Building its parts (the
model, the KV cache's size, the runner) is engine_setup's; its counters are stats.py's.
Features sit beside it: a beam search is a group of sequences (beam_search.py), speculative
decoding fills lookahead slots in the runner (runner/spec_decode/), and the web page's
inspection watches a step through `hook` (step_record.py) or reads a snapshot between steps.
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

from nanovllm.beam_search import BeamGroup
from nanovllm.block_manager import BlockManager
from nanovllm.config import EngineConfig
from nanovllm.contract.step import ModelRunnerOutput, SchedulerOutput
from nanovllm.engine_setup import EngineParts, build_parts
from nanovllm.input_processor import NOT_GENERATING, InputProcessor
from nanovllm.kv_disk.tier import disk_tier_for
from nanovllm.output_processor import OutputProcessor
from nanovllm.pooling_input import PoolingInput
from nanovllm.scheduler import Scheduler
from nanovllm.scheduling_policy import policy_for
from nanovllm.sequence import Request
from nanovllm.snapshot import EngineSnapshot, take_snapshot
from nanovllm.stats import EngineStats, StatsCollector, StepStats
from nanovllm.values.errors import InvalidRequestError, QueueFullError
from nanovllm.values.inputs import PromptType
from nanovllm.values.lora_request import LoRARequest
from nanovllm.values.outputs import RequestMetrics, RequestOutput
from nanovllm.values.request import EngineRequest
from nanovllm.values.sampling_params import SamplingParams

logger = logging.getLogger("nanovllm")


class StepHook(Protocol):
    """Watches one step from the outside (step_record.StepRecorder): before it is scheduled,
    once it is, and after the engine processed its outputs (not called for an empty step)."""

    def before(self, engine: LLMEngine) -> None: ...
    def scheduled(self, step: SchedulerOutput) -> None: ...
    def after(self, engine: LLMEngine, step: SchedulerOutput, result: ModelRunnerOutput
              ) -> None: ...


class LLMEngine:
    def __init__(self, config: EngineConfig, parts: EngineParts | None = None):
        self.config = config
        parts = parts or build_parts(config)
        loaded = parts.loaded
        self.model_path, self.model_config, self.is_dummy = loaded.path, loaded.config, loaded.is_dummy
        self.architecture = loaded.architecture  # config.json's, e.g. LlamaForCausalLM
        self.tokenizer, self.max_model_len = parts.tokenizer, parts.max_model_len
        self.num_kv_blocks, self.runner = parts.num_kv_blocks, parts.runner
        self.pooling = parts.pooling  # a pooling model's (embeddings, scores); None: it generates
        cfg = self.model_config
        self.eos_token_ids = cfg.eos_token_ids  # each ends a sequence (generation_config may list several)
        # Token ids a request may use: the model embeds them and the tokenizer decodes them.
        self.vocab_size = min(cfg.vocab_size, self.tokenizer.vocab_size)
        pooling_input = None if self.pooling is None else PoolingInput(
            self.tokenizer, self.vocab_size, self.max_model_len, self.pooling, cfg.n_embd,
            getattr(cfg, "is_classifier", False))
        self.processor = InputProcessor(self.tokenizer, self.vocab_size, self.max_model_len,
                                        config.block_size, self.num_kv_blocks,
                                        config.max_waiting_seqs, pooling_input,
                                        config.scheduling_policy)
        # A pooling model keeps no K/V: there is nothing to cache, in memory or on disk.
        self.block_manager = BlockManager(
            self.num_kv_blocks, config.block_size,
            config.enable_prefix_caching and self.pooling is None,
            None if self.pooling else disk_tier_for(config, loaded, self.runner.kv_cache))
        speculator = self.runner.speculator
        # A pooling sequence is computed whole in one step: the budget always fits one.
        budget = max(config.max_num_batched_tokens, self.max_model_len if self.pooling else 0)
        self.scheduler = Scheduler(self.block_manager, config.max_num_seqs, budget,
                                   speculator.step_lookahead if speculator else None,
                                   policy_for(config.scheduling_policy))
        self.stats = StatsCollector(config)
        self.output_processor = OutputProcessor(self.tokenizer, self.eos_token_ids,
                                                self.max_model_len, self.stats)
        self.requests: dict[str, Request] = {}
        self.hook: StepHook | None = None  # watches each step while set (inspection)

    # ---- requests in -------------------------------------------------------------------------
    def add_request(self, request_id: str, prompt: PromptType, params: SamplingParams, *,
                    final_only: bool = False, priority: int = 0) -> None:
        """Check and queue a request (vLLM's offline form): `add(processor.process(...))`."""
        self.add(self.processor.process(request_id, prompt, params, final_only=final_only,
                                        priority=priority))

    def add(self, request: EngineRequest) -> None:
        """Queue a checked request; step() returns its cumulative output after every step that
        adds a token, or with `final_only` only once it finishes. Only what depends on the
        engine's live state is checked here: a free request id, room in the waiting queue."""
        request_id, params = request.request_id, request.params
        if (request.pooling is None) != (self.pooling is None):
            raise InvalidRequestError(
                NOT_GENERATING if self.pooling else "This model generates text; it makes no "
                "embeddings or scores unless started with --runner pooling.", "model")
        if request_id in self.requests:
            raise ValueError(f"request_id {request_id!r} is already in use")
        if request.adapter_id and request.adapter_id not in self._adapters():
            raise InvalidRequestError(f"no LoRA adapter with id {request.adapter_id} is loaded",
                                      "lora_request")
        if self.scheduler.num_waiting_seqs + params.n > self.config.max_waiting_seqs:
            raise QueueFullError(
                f"The server is busy: {self.scheduler.num_waiting_seqs} sequences are waiting and "
                f"this request's {params.n} would pass the limit of "
                f"{self.config.max_waiting_seqs}. Please retry later.")
        # A group's first sequence computes the prompt, then forks into the group.
        group = None if request.beam is None else BeamGroup.start(request.beam, self.eos_token_ids)
        state = Request(request_id, request.prompt, request.prompt_token_ids, params,
                        final_only=request.final_only or group is not None, group=group,
                        pooling=request.pooling, token_type_ids=request.token_type_ids,
                        metrics=RequestMetrics(time.perf_counter()),
                        adapter_id=request.adapter_id, priority=request.priority)
        if params.prompt_logprobs is not None:
            state.prompt_logprobs = [None] * len(request.prompt_token_ids)
        state.seqs = [self.output_processor.new_sequence(state, index)
                      for index in range(1 if group else params.n)]
        # Only now, with nothing left that can fail, does the request enter the engine.
        for seq in state.seqs:
            self.scheduler.add(seq)
        self.requests[request_id] = state

    def abort_request(self, request_id: str | list[str]) -> None:
        for rid in [request_id] if isinstance(request_id, str) else request_id:
            request = self.requests.pop(rid, None)
            if request is not None:
                self.stats.num_aborted_total += 1
                self.scheduler.abort(request)

    # ---- adapters (LoRA), as vLLM's engine manages them -----------------------------------------
    def add_lora(self, lora: LoRARequest) -> bool:
        """Loads the adapter, checked whole first (an AdapterError naming it, nothing loaded, if
        it cannot run on this model); False if its id is loaded already (it is not reloaded)."""
        adapters = self._adapters()
        if lora.lora_int_id in adapters:
            return False
        adapters.load(lora.lora_name, lora.lora_int_id, lora.lora_path)
        return True

    def remove_lora(self, lora_id: int) -> bool:
        """Unloads the adapter (refused while a request uses it); False if it is not loaded."""
        users = [rid for rid, r in self.requests.items() if r.adapter_id == lora_id]
        if users:
            raise InvalidRequestError(f"LoRA adapter {lora_id} is in use by {len(users)} "
                                      "unfinished request(s)", "lora_name")
        return self._adapters().remove(lora_id)

    def list_loras(self) -> set[int]:
        return set(self._adapters().by_id) if getattr(self.runner, "adapters", None) else set()

    def _adapters(self):
        if getattr(self.runner, "adapters", None) is None:
            raise InvalidRequestError("LoRA adapters need an engine started with enable_lora "
                                      "(--enable-lora)", "lora_request")
        return self.runner.adapters

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    # ---- one step ----------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """Schedule -> run -> process outputs; returns those of the requests that advanced."""
        hook, preemptions = self.hook, self.scheduler.num_preemptions
        if hook:
            hook.before(self)
        start = time.perf_counter()  # the step itself: the watcher's copy of the state is not
        step = self.scheduler.schedule()
        if hook:
            hook.scheduled(step)
        result = self.runner.run(step)  # also when empty: it learns of new and finished sequences
        if not step.scheduled:
            return []
        seqs = self.scheduler.update_from_output(step, result)
        decided = self.output_processor.process(step, seqs, result)
        self.scheduler.apply(decided)
        outputs = self.output_processor.outputs(decided)
        for out in outputs:
            if out.finished:  # a finished request leaves the engine
                del self.requests[out.request_id]
        self.runner.step_took(time.perf_counter() - start)
        self.stats.record_step(step, seqs, result, start,
                               self.scheduler.num_preemptions - preemptions)
        if hook:
            hook.after(self, step, result)
        return outputs

    # ---- looking at it -----------------------------------------------------------------------
    @property
    def num_steps(self) -> int:
        """Steps that ran the model: the clock scheduling is measured in."""
        return self.stats.num_steps

    @property
    def last_step(self) -> StepStats:
        return self.stats.last_step

    @property
    def spec_stats(self):
        """The runner's speculative-decoding counters (None without speculative_config)."""
        return self.runner.speculator.stats if self.runner.speculator else None

    def get_stats(self) -> EngineStats:
        return self.stats.collect(self.scheduler, len(self.requests), self.spec_stats,
                                  getattr(self.runner, "adapters", None))

    def snapshot(self) -> EngineSnapshot:
        """Blocks, queues and recent steps as plain values; only from the thread that steps."""
        return take_snapshot(self.scheduler, list(self.stats.recent_steps), self.num_steps)
