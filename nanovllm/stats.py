"""The engine's statistics: counters kept as steps run, and the `EngineStats` value the server's
metrics, /health and the Ray replicas read.

`StatsCollector` is told about each step after it ran (`record_step`) and about the tokens the
output processor took (`count_tokens`); `collect` reads the rest (queues, blocks) from the
scheduler and block manager when asked. Nothing here decides anything: the engine would step
the same without it.
"""

from __future__ import annotations

import bisect
import time
from collections import deque
from copy import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from nanovllm.contract.step import ModelRunnerOutput, SchedulerOutput

if TYPE_CHECKING:
    from nanovllm.config import EngineConfig
    from nanovllm.kv_disk.store import DiskStats
    from nanovllm.scheduler import Scheduler
    from nanovllm.sequence import Sequence

# vLLM's bounds for vllm:iteration_tokens_total (tokens per engine step).
ITERATION_TOKENS_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)

STEP_HISTORY = 120  # steps kept for the engine view's strip of recent steps


@dataclass(frozen=True, slots=True)
class LoRAStats:
    """The LoRA adapters in use (vLLM's vllm:lora_requests_info), by name."""
    max_loras: int
    running: tuple[str, ...] = ()  # adapters of the running sequences
    waiting: tuple[str, ...] = ()  # adapters of the waiting ones


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
    # Steps by their tokens, as vLLM counts them: the prompts the step finished plus the tokens
    # it generated. Counts per ITERATION_TOKENS_BUCKETS bound (the last for larger steps), and
    # their total (prompt_tokens_total + generation_tokens_total).
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
    prefix_cache_disk: DiskStats | None = None  # the prefix cache directory's (if configured)
    lora: LoRAStats | None = None  # the adapters in use (None: an engine without enable_lora)


@dataclass(slots=True)
class StepStats:
    """One engine step (LLMEngine.last_step, and the engine view's strip of recent steps)."""

    num_prefill_tokens: int = 0  # prompt tokens computed (a chunk, or a preempted recompute)
    num_pooled_tokens: int = 0   # of those, the texts' pooled whole (embeddings, scores; no KV kept)
    num_decode_tokens: int = 0   # one per sequence that generated from its last token
    seconds: float = 0.0
    num_seqs: int = 0
    num_preemptions: int = 0     # sequences preempted while this step was scheduled
    num_proposed: int = 0        # lookahead tokens verified this step (speculative decoding)
    num_accepted: int = 0        # and kept (the rest were rejected)


class StatsCollector:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.prompt_tokens_total = self.generation_tokens_total = self.num_aborted_total = 0
        self.num_steps = 0  # steps that ran the model: the clock scheduling is measured in
        self.iteration_tokens = [0] * (len(ITERATION_TOKENS_BUCKETS) + 1)
        self.iteration_tokens_sum = 0
        self._step_tokens = 0  # counted by count_tokens since the last step was recorded
        self.last_step = StepStats()
        self.recent_steps: deque[StepStats] = deque(maxlen=STEP_HISTORY)

    def count_tokens(self, num_prompt: int, num_generated: int) -> None:
        """Prompt tokens of requests whose prompt was just processed, and tokens generated."""
        self.prompt_tokens_total += num_prompt
        self.generation_tokens_total += num_generated
        self._step_tokens += num_prompt + num_generated

    def record_step(self, step: SchedulerOutput, seqs: list[Sequence], result: ModelRunnerOutput,
                    start: float, preemptions: int) -> None:
        """The step in the engine view's strip and the metrics: its size in
        vllm:iteration_tokens_total (what count_tokens counted during it: a prompt's tokens
        where its first token is generated, not the chunks computed before, as vLLM counts),
        and when its requests were first scheduled (the end of their time in the queue)."""
        decodes = sum(len(s.token_ids) == 1 and s.num_output_tokens > 0 for s in step.scheduled)
        reserved = sum(s.num_lookahead for s in step.scheduled)
        proposed = sum(result.lookahead_filled.values())
        accepted = sum(len(result.sampled[i]) - 1 for i in result.lookahead_filled)
        pooled = sum(len(s.token_ids) for s in step.scheduled if s.seq_id in result.pooled)
        self.last_step = StepStats(step.num_tokens - decodes - reserved, pooled, decodes,
                                   time.perf_counter() - start, len(step.scheduled), preemptions,
                                   proposed, accepted)
        self.recent_steps.append(self.last_step)
        self.num_steps += 1
        tokens, self._step_tokens = self._step_tokens, 0
        self.iteration_tokens[bisect.bisect_left(ITERATION_TOKENS_BUCKETS, tokens)] += 1
        self.iteration_tokens_sum += tokens
        for seq in seqs:
            if seq.request.metrics.first_scheduled_time is None:
                seq.request.metrics.first_scheduled_time = start

    def collect(self, scheduler: Scheduler, num_requests: int, lookahead,
                adapters: LoRANames | None = None) -> EngineStats:
        """`lookahead`: the runner's counters of proposed and accepted tokens, or None;
        `adapters`: the loaded LoRA adapters (None: LoRA is off)."""
        bm, config = scheduler.block_manager, self.config
        # Requests, not sequences: a request with n samples counts once, as running if any runs.
        # Every unfinished request is running or waiting (step() drops the finished ones), so
        # only the running sequences are looked at: the server asks after every step.
        num_running = len({s.request for s in scheduler.running})
        counts = {} if lookahead is None else dict(
            spec_decode_num_drafts=lookahead.num_drafts,
            spec_decode_num_draft_tokens=lookahead.num_draft_tokens,
            spec_decode_num_accepted_tokens=lookahead.num_accepted_tokens,
            spec_decode_accepted_per_position=tuple(lookahead.accepted_per_position))
        return EngineStats(
            num_running=num_running, num_waiting=num_requests - num_running,
            num_free_blocks=bm.num_free_blocks, num_total_blocks=bm.num_blocks,
            kv_cache_usage=1.0 - bm.num_free_blocks / bm.num_blocks,
            prompt_tokens_total=self.prompt_tokens_total,
            generation_tokens_total=self.generation_tokens_total,
            num_preemptions_total=scheduler.num_preemptions,
            prefix_cache_queries=scheduler.prefix_cache_queries,
            prefix_cache_hits=scheduler.prefix_cache_hits,
            num_aborted_total=self.num_aborted_total, num_waiting_seqs=scheduler.num_waiting_seqs,
            num_steps_total=self.num_steps,
            iteration_tokens=tuple(self.iteration_tokens),
            iteration_tokens_sum=self.iteration_tokens_sum,
            block_size=config.block_size, kv_cache_dtype=config.kv_cache_dtype,
            enable_prefix_caching=config.enable_prefix_caching,
            prefix_cache_disk=copy(bm.lower_tier.stats) if bm.lower_tier else None,
            lora=None if adapters is None else lora_stats(scheduler, adapters), **counts)


class LoRANames(Protocol):
    """What the stats read of the loaded adapters (model/lora/loaded.py)."""
    max_loras: int
    named: dict[int, tuple[str, str]]  # every id ever loaded -> (name, path)


def lora_stats(scheduler: Scheduler, adapters: LoRANames) -> LoRAStats:
    """The names of the adapters the running and the waiting sequences use, sorted."""
    def names(seqs) -> tuple[str, ...]:
        ids = {seq.request.adapter_id for seq in seqs} - {0}
        return tuple(sorted(adapters.named[i][0] for i in ids))
    return LoRAStats(adapters.max_loras, names(scheduler.running), names(scheduler.waiting))
