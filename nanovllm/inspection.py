"""The web page's inspection of an engine, beside the EngineClient that serves requests.

`EngineInspector` is what the page's engine, attention, forward-pass and step views ask of an
engine: its shape, a `snapshot` of its blocks and queues, step mode (pause, take one recorded
step, resume) and the reference path's attention maps and forward traces. `Inspector` is the
one implementation, for an AsyncEngine in this process; engine replicas on Ray Serve have none
(there is no one engine to look at), and the page says so.

It touches the engine only where it may: snapshots and steps run on the engine thread, between
two steps (`AsyncEngine.call`); a pause is the engine thread's `hold`, a lease the page renews
while it is open, so a closed tab cannot leave the server paused; attention maps and traces
read only the weights, which never change, on the caller's thread.
"""

from __future__ import annotations

import time
from concurrent.futures import Future
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from nanovllm.model.architectures.registry import family_of
from nanovllm.model.architectures.trace import ForwardTrace, trace_forward
from nanovllm.model.weights.quant import dequantize_weights
from nanovllm.snapshot import EngineSnapshot
from nanovllm.step_record import (
    DEFAULT_PAUSE_LEASE,
    MAX_PAUSE_LEASE,
    StepMode,
    StepModeDisabled,
    StepRecord,
    recording,
)

if TYPE_CHECKING:
    from nanovllm.async_engine import AsyncEngine
    from nanovllm.engine import LLMEngine


@runtime_checkable  # isinstance checks that every member is there (tests do)
class EngineInspector(Protocol):
    n_layer: int              # the model's shape, for attention_weights
    n_head: int               # query heads
    num_kv_heads: int         # key/value heads: query head h reads h // (n_head // num_kv_heads)
    step_mode_enabled: bool   # pause/step/resume are allowed (serve --enable-step-mode)

    @property
    def step_mode(self) -> StepMode:
        """Paused or not, and the last single step's record."""

    def snapshot(self) -> Future[EngineSnapshot]:
        """The blocks, queues and recent steps, taken by the engine between two steps (never by
        the caller walking engine state); fails with EngineDeadError or RequestAborted."""

    def attention_weights(self, token_ids: list[int]) -> np.ndarray:
        """[n_layer, n_head, T, T] attention probabilities of a prompt, by the model's reference
        path; blocks the calling thread (never the engine's) for a whole forward pass."""

    def trace_forward(self, token_ids: list[int]) -> ForwardTrace:
        """A prompt's forward pass layer by layer (residual norms, attention, logit lens), by
        the reference path; blocks the calling thread like attention_weights."""

    def pause(self, lease: float = ...) -> Future[StepMode]:
        """Stop stepping for `lease` seconds unless renewed; requests still come in and wait."""

    def step(self, lease: float = ...) -> Future[StepMode]:
        """Pause (or renew it) and take one recorded step."""

    def resume(self) -> Future[StepMode]: ...


def attention_weights(engine: LLMEngine, token_ids: list[int]) -> np.ndarray:
    """[n_layer, n_head, T, T]: how much each token attends to each earlier one, by the
    reference path. Any thread may call it: it reads only the weights, which never change
    (the caller bounds T: this is a whole forward pass without a KV cache)."""
    # int8/bfloat16 weights are widened for the call (float32 ones pass through as they are).
    cfg = engine.model_config
    return family_of(cfg).reference.attention_weights(
        dequantize_weights(engine.runner.weights), cfg, np.asarray(token_ids))


def forward_trace(engine: LLMEngine, token_ids: list[int]) -> ForwardTrace:
    """One forward pass layer by layer (model/architectures/trace.py), by the reference path, on the
    caller's thread like attention_weights."""
    cfg = engine.model_config
    return trace_forward(dequantize_weights(engine.runner.weights), cfg,
                         np.asarray(token_ids), ref=family_of(cfg).reference)


class Inspector:
    """The EngineInspector of an AsyncEngine (`client`) in this process."""

    def __init__(self, client: AsyncEngine, enable_step_mode: bool = False) -> None:
        self.client, self.engine = client, client.engine
        self.step_mode_enabled = enable_step_mode
        cfg = self.engine.model_config
        self.n_layer, self.n_head, self.num_kv_heads = cfg.n_layer, cfg.n_head, cfg.num_kv_heads
        self._snapshot: EngineSnapshot | None = None
        self._snapshot_of: tuple | None = None  # the engine's state it was taken in
        self._record: StepRecord | None = None  # the last single step's

    @property
    def step_mode(self) -> StepMode:
        held_until = self.client.held_until
        lease_left = 0.0 if held_until is None else max(0.0, held_until - time.monotonic())
        return StepMode(held_until is not None, lease_left, self._record, self.engine.num_steps)

    def snapshot(self) -> Future[EngineSnapshot]:
        """Taken at the engine thread's next pause between steps; however often it is asked, at
        most one per change (a step, a request added or aborted)."""
        return self.client.call(self._take_snapshot)

    def _take_snapshot(self) -> EngineSnapshot:
        engine = self.engine
        state = (engine.num_steps, len(engine.requests), engine.stats.num_aborted_total)
        if self._snapshot_of != state:
            self._snapshot, self._snapshot_of = engine.snapshot(), state
        return self._snapshot

    def attention_weights(self, token_ids: list[int]) -> np.ndarray:
        return attention_weights(self.engine, token_ids)

    def trace_forward(self, token_ids: list[int]) -> ForwardTrace:
        return forward_trace(self.engine, token_ids)

    # ---- step mode: pause, step, resume -----------------------------------------------------
    def pause(self, lease: float = DEFAULT_PAUSE_LEASE) -> Future[StepMode]:
        """Stop stepping after the step in flight, for `lease` seconds unless renewed (pause or
        step again). Requests are still taken and aborted; they wait in the queue."""
        lease = self._lease(lease)
        return self.client.call(lambda: self._hold(lease))

    def step(self, lease: float = DEFAULT_PAUSE_LEASE) -> Future[StepMode]:
        """Pause (or renew the pause) and take exactly one step, recording it (`.record`; no
        step, and the last record again, when no request is unfinished)."""
        lease = self._lease(lease)
        return self.client.call(lambda: self._step_once(lease))

    def resume(self) -> Future[StepMode]:
        self._lease(DEFAULT_PAUSE_LEASE)
        return self.client.call(lambda: self._hold(None))

    def _hold(self, lease: float | None) -> StepMode:
        self.client.hold(lease)
        return self.step_mode

    def _step_once(self, lease: float) -> StepMode:
        """One recorded step (on the engine thread), its outputs dispatched as any step's."""
        self.client.hold(lease)
        if self.engine.has_unfinished_requests():
            with recording(self.engine) as recorder:
                self.client.run_step()
            self._record = recorder.record or self._record
        return self.step_mode

    def _lease(self, seconds: float) -> float:
        if not self.step_mode_enabled:
            raise StepModeDisabled("Step mode is off: start the server with --enable-step-mode "
                                   "(Inspector(client, enable_step_mode=True)).")
        if not 0 < seconds <= MAX_PAUSE_LEASE:
            raise ValueError(f"lease must be in (0, {MAX_PAUSE_LEASE:g}] seconds, got {seconds}")
        return float(seconds)
