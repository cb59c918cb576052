"""AsyncEngine, the EngineClient of one process: a background thread owns the LLMEngine and
drives step(); the server's asyncio handlers talk to it from their own thread.

They never touch the engine's running state: besides the tokenizer and the input processor,
which read nothing the engine thread changes, they only enqueue commands (small dataclasses) on
a thread-safe queue. Whether the engine took a request comes back as a Future, and its outputs
through the OutputSink the server gave with it (a step's outputs in one callback per event loop:
engine_client.deliver).
When no request is unfinished the thread blocks on the queue, so an idle server does not
spin. A snapshot for the web page is a command too: the thread takes it between two steps,
one for everyone who asked since the last, and hands the last one out again while nothing
has changed: however often it is asked, it costs at most one snapshot per step. If step()
raises, the engine is marked dead: every pending request gets an EngineDeadError, new requests
are refused, and /health answers 503.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nanovllm.config import EngineConfig
from nanovllm.engine import LLMEngine
from nanovllm.engine_client import EngineDeadError, OutputSink, RequestAborted, deliver
from nanovllm.snapshot import EngineSnapshot
from nanovllm.step_record import (
    DEFAULT_PAUSE_LEASE,
    MAX_PAUSE_LEASE,
    StepMode,
    StepModeDisabled,
)
from nanovllm.values.errors import QueueFullError
from nanovllm.values.request import EngineRequest

if TYPE_CHECKING:
    import numpy as np

    from nanovllm.model.trace import ForwardTrace

logger = logging.getLogger(__name__)

SHUTTING_DOWN = "The server is shutting down."
ENGINE_THREAD = "nanovllm-engine"  # the thread that owns the LLMEngine and steps it


# The commands the engine thread takes from its inbox, between two steps.
@dataclass(slots=True)
class AddRequest:
    request: EngineRequest
    sink: OutputSink
    accepted: Future[None]  # done when the engine took it, or failed with why not


@dataclass(slots=True)
class Abort:
    request_ids: list[str]


@dataclass(slots=True)
class AbortAll:
    reason: str  # what each request's sink is told


@dataclass(slots=True)
class TakeSnapshot:
    future: Future[EngineSnapshot]


@dataclass(slots=True)
class Stop:
    pass


# Step mode (enable_step_mode): the engine stops stepping by itself and steps when told.
@dataclass(slots=True)
class Pause:
    lease: float  # seconds the pause lasts unless renewed (by Pause or StepOnce again)
    done: Future[StepMode]


@dataclass(slots=True)
class StepOnce:
    lease: float  # it pauses too, or renews the pause
    done: Future[StepMode]


@dataclass(slots=True)
class Resume:
    done: Future[StepMode]


Command = AddRequest | Abort | AbortAll | TakeSnapshot | Stop | Pause | StepOnce | Resume




class AsyncEngine:
    """Owns `engine`; call start(), then add_request/abort from any thread, then shutdown()."""

    def __init__(self, engine: LLMEngine, enable_step_mode: bool = False) -> None:
        self.engine = engine
        self.step_mode_enabled = enable_step_mode
        self.tokenizer = engine.tokenizer
        self.processor = engine.processor
        self.max_model_len: int = engine.max_model_len
        self.vocab_size: int = engine.vocab_size
        self.model_path, self.is_dummy = str(engine.model_path), engine.is_dummy
        cfg = engine.model_config
        self.n_layer, self.n_head, self.n_kv_head = cfg.n_layer, cfg.n_head, cfg.num_kv_heads
        self.stats = engine.get_stats()  # snapshot, refreshed by the thread after every change
        self.error: BaseException | None = None
        self.degraded: str | None = None  # one engine serves fully or not at all
        self.replica_stats = None  # one engine: `stats` is the whole story
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._sinks: dict[str, OutputSink] = {}  # touched only by the engine thread
        self._snapshot_waiters: list[Future] = []  # likewise
        self._snapshot: EngineSnapshot | None = None
        self._changes = 0  # requests added or aborted: with the step count, when to take anew
        self._snapshot_of: tuple[int, int] | None = None  # (steps, changes) of _snapshot
        self._paused_until: float | None = None  # time.monotonic() a pause ends; None: running
        self.step_mode = StepMode(False, 0.0, None, 0)  # replaced by the engine thread
        self._lock = threading.Lock()  # orders "refuse new work" against "enqueue work"
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=ENGINE_THREAD, daemon=True)

    @classmethod
    def from_config(cls, config: EngineConfig, enable_step_mode: bool = False) -> AsyncEngine:
        """Load the model on the engine thread and start stepping there; returns once it is
        loaded (or raises what loading raised).

        Loading compiles and first runs the parallel kernels, and GNU OpenMP gives each thread
        that starts parallel work a team of worker threads of its own: a model loaded on the
        caller's thread and stepped on another left two teams on the same cores, and every
        step of the engine thread ran slower for it."""
        loaded: Future[AsyncEngine] = Future()

        def load_and_run() -> None:
            try:
                client = cls(LLMEngine(config), enable_step_mode)
            except BaseException as exc:  # noqa: BLE001 - the caller's to handle
                loaded.set_exception(exc)
                return
            client._thread = threading.current_thread()  # the engine thread: no start()
            loaded.set_result(client)
            client._run()

        threading.Thread(target=load_and_run, name=ENGINE_THREAD, daemon=True).start()
        return loaded.result()

    # ---- called from the HTTP side -------------------------------------------------------
    def start(self) -> AsyncEngine:
        self._thread.start()
        return self

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    @property
    def is_alive(self) -> bool:
        return self.error is None and self._thread.is_alive()

    def add_request(self, request: EngineRequest, sink: OutputSink) -> Future[None]:
        accepted: Future[None] = Future()
        self._send(AddRequest(request, sink, accepted), accepted)
        return accepted

    def snapshot(self) -> Future[EngineSnapshot]:
        """The engine's blocks, queues and recent steps, as the engine thread sees them at its
        next pause between steps (EngineDeadError or RequestAborted if it will not pause again)."""
        future: Future[EngineSnapshot] = Future()
        self._send(TakeSnapshot(future), future)
        return future

    # ---- step mode: pause, step, resume -----------------------------------------------------
    def pause(self, lease: float = DEFAULT_PAUSE_LEASE) -> Future[StepMode]:
        """Stop stepping after the step in flight, for `lease` seconds unless renewed (pause or
        step again). Requests are still taken and aborted; they wait in the queue."""
        return self._step_command(Pause(_lease(lease), Future()))

    def step(self, lease: float = DEFAULT_PAUSE_LEASE) -> Future[StepMode]:
        """Pause (or renew the pause) and take exactly one step, recording it (`.record`; no
        step, and the last record again, when no request is unfinished)."""
        return self._step_command(StepOnce(_lease(lease), Future()))

    def resume(self) -> Future[StepMode]:
        return self._step_command(Resume(Future()))

    def _step_command(self, cmd: Pause | StepOnce | Resume) -> Future[StepMode]:
        if not self.step_mode_enabled:
            raise StepModeDisabled("Step mode is off: start the server with --enable-step-mode "
                                   "(AsyncEngine(..., enable_step_mode=True)).")
        self._send(cmd, cmd.done)
        return cmd.done

    def _send(self, cmd: Command, future: Future) -> None:
        """Queue `cmd` unless the engine is dead or closing: then its `future` fails at once."""
        with self._lock:
            if self.error is not None:
                _fail_future(future, EngineDeadError(f"The engine is dead: {self.error!r}"))
            elif self._closed:
                _fail_future(future, RequestAborted(SHUTTING_DOWN))
            else:
                self._inbox.put(cmd)

    def attention_weights(self, token_ids: list[int]) -> np.ndarray:
        """The attention of every layer and head over `token_ids` [n_layer, n_head, T, T],
        computed on the caller's thread from the weights alone, never on the engine thread."""
        return self.engine.attention_weights(token_ids)

    def trace_forward(self, token_ids: list[int]) -> ForwardTrace:
        """One forward pass layer by layer (model/trace.py), on the caller's thread."""
        return self.engine.trace_forward(token_ids)

    def abort(self, request_ids: list[str]) -> None:
        if request_ids:
            self._inbox.put(Abort(list(request_ids)))

    def abort_all(self, reason: str) -> None:
        """Abort every in-flight request; their handlers get RequestAborted(reason)."""
        self._inbox.put(AbortAll(reason))

    def shutdown(self, timeout: float = 10.0) -> None:
        with self._lock:
            self._closed = True
        self._inbox.put(Stop())
        if self._thread.is_alive():
            self._thread.join(timeout)

    # ---- the engine thread ---------------------------------------------------------------
    def _run(self) -> None:
        try:
            while True:
                if not self._apply(self._next_commands()):
                    break
                if self._paused_until is None:
                    self._step()
                else:
                    self.stats = self.engine.get_stats()  # requests added while paused count
                self._answer_snapshots()
        except BaseException as exc:  # noqa: BLE001 - any engine failure kills the engine
            logger.exception("engine loop crashed; marking the engine dead")
            self._die(exc)
            return
        closing = RequestAborted(SHUTTING_DOWN)
        self._fail_snapshots(closing)
        self._drain_inbox(closing)
        self.stats = self.engine.get_stats()

    def _step(self) -> None:
        outputs = self.engine.step() if self.engine.has_unfinished_requests() else []
        self.stats = self.engine.get_stats()  # before dispatch: never older than an output
        self._dispatch(outputs)

    def _next_commands(self) -> list[Command]:
        """Block while idle or paused (a pause until its lease ends); otherwise take whatever
        is queued without waiting."""
        if self._paused_until is not None:
            try:
                cmds = [self._inbox.get(timeout=max(0.0, self._paused_until - time.monotonic()))]
            except queue.Empty:
                logger.warning("step mode: nobody renewed the pause; resuming")
                self._set_paused(None)
                cmds = []
        else:
            cmds = [] if self.engine.has_unfinished_requests() else [self._inbox.get()]
        while True:
            try:
                cmds.append(self._inbox.get_nowait())
            except queue.Empty:
                return cmds

    def _apply(self, cmds: list[Command]) -> bool:
        """Carries out the commands in order; False once told to stop."""
        for cmd in cmds:
            self._changes += not isinstance(cmd, TakeSnapshot | Pause | Resume)
            match cmd:
                case Pause(lease, done):
                    self._set_paused(lease)
                    _answer(done, self.step_mode)
                case StepOnce(lease, done):
                    self._set_paused(lease)
                    self._step_once()
                    _answer(done, self.step_mode)
                case Resume(done):
                    self._set_paused(None)
                    _answer(done, self.step_mode)
                case AddRequest():
                    self._add(cmd)
                case Abort(request_ids):
                    self._abort(request_ids)
                case AbortAll(reason):
                    self._abort(list(self._sinks), RequestAborted(reason))
                case TakeSnapshot(future):
                    self._snapshot_waiters.append(future)
                case Stop():
                    self._abort(list(self._sinks), RequestAborted(SHUTTING_DOWN))
                    return False
        return True

    def _set_paused(self, lease: float | None) -> None:
        self._paused_until = None if lease is None else time.monotonic() + lease
        self.step_mode = StepMode(lease is not None, lease or 0.0, self.step_mode.record,
                                  self.engine.num_steps)

    def _step_once(self) -> None:
        """One recorded step, its outputs dispatched as any step's."""
        record = self.step_mode.record
        if self.engine.has_unfinished_requests():
            self.engine.record_next_step = True
            self._step()
            record = self.engine.last_record or record
        self.step_mode = StepMode(True, self._paused_until - time.monotonic(), record,
                                  self.engine.num_steps)

    def _add(self, cmd: AddRequest) -> None:
        if not cmd.accepted.set_running_or_notify_cancel():
            return  # the submitter gave up before the engine got to it
        try:
            self.engine.add(cmd.request)
        except QueueFullError as exc:  # the client's to handle
            cmd.accepted.set_exception(exc)
            return
        except Exception as exc:  # an engine bug for this request only: report, keep serving
            logger.exception("engine.add failed for %s", cmd.request.request_id)
            cmd.accepted.set_exception(exc)
            return
        self._sinks[cmd.request.request_id] = cmd.sink
        cmd.accepted.set_result(None)

    def _abort(self, request_ids: list[str], notify: BaseException | None = None) -> None:
        if not request_ids:
            return
        self.engine.abort_request(request_ids)
        self.stats = self.engine.get_stats()  # freed blocks visible before anyone is told
        for rid in request_ids:
            sink = self._sinks.pop(rid, None)
            if sink is not None and notify is not None:
                sink.put(notify)

    def _answer_snapshots(self) -> None:
        if not self._snapshot_waiters:
            return
        state = (self.engine.num_steps, self._changes)
        if self._snapshot_of != state:
            self._snapshot, self._snapshot_of = self.engine.snapshot(), state
        for future in self._snapshot_waiters:
            if future.set_running_or_notify_cancel():  # False: the asker gave up waiting
                future.set_result(self._snapshot)
        self._snapshot_waiters.clear()

    def _dispatch(self, outputs) -> None:
        deliveries = []
        for out in outputs:
            sink = self._sinks.get(out.request_id)
            if sink is None:
                continue
            if out.finished:
                del self._sinks[out.request_id]
            deliveries.append((sink, out))
        deliver(deliveries)

    def _die(self, exc: BaseException) -> None:
        with self._lock:
            self.error = exc
        dead = EngineDeadError(f"The engine is dead: {type(exc).__name__}: {exc}")
        self._fail_all(dead)
        self._drain_inbox(dead)

    def _drain_inbox(self, exc: BaseException) -> None:
        """Answer adds and snapshots queued before the lock closed the door; nobody will run them."""
        while True:
            try:
                cmd = self._inbox.get_nowait()
            except queue.Empty:
                return
            match cmd:
                case AddRequest(accepted=future) | TakeSnapshot(future=future):
                    _fail_future(future, exc)
                case Pause(done=future) | StepOnce(done=future) | Resume(done=future):
                    _fail_future(future, exc)

    def _fail_all(self, exc: BaseException) -> None:
        for sink in self._sinks.values():
            sink.put(exc)
        self._sinks.clear()
        self._fail_snapshots(exc)

    def _fail_snapshots(self, exc: BaseException) -> None:
        for future in self._snapshot_waiters:
            _fail_future(future, exc)
        self._snapshot_waiters.clear()


def _lease(seconds: float) -> float:
    if not 0 < seconds <= MAX_PAUSE_LEASE:
        raise ValueError(f"lease must be in (0, {MAX_PAUSE_LEASE:g}] seconds, got {seconds}")
    return float(seconds)


def _answer(future: Future, value) -> None:
    if future.set_running_or_notify_cancel():
        future.set_result(value)


def _fail_future(future: Future, exc: BaseException) -> None:
    if future.set_running_or_notify_cancel():
        future.set_exception(exc)
