"""AsyncEngine, the EngineClient of one process: a background thread owns the LLMEngine and
drives step(); the server's asyncio handlers talk to it from their own thread.

They never touch the engine's running state: besides the tokenizer and the input processor,
which read nothing the engine thread changes, they only enqueue commands (small dataclasses) on
a thread-safe queue. Whether the engine took a request comes back as a Future, and its outputs
through the OutputSink the server gave with it (a step's outputs in one callback per event loop:
engine_client.deliver).
When no request is unfinished the thread blocks on the queue, so an idle server does not
spin. Two general commands serve whoever watches the engine (the web page's inspection.py):
`call` runs a function on the engine thread after its next step (or at once while idle), and
`hold` stops the thread stepping until a deadline, while requests still come in. If step()
raises, the engine is marked dead: every pending request gets an EngineDeadError, new requests
are refused, and /health answers 503.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

from nanovllm.config import EngineConfig
from nanovllm.engine import LLMEngine
from nanovllm.engine_client import EngineDeadError, OutputSink, RequestAborted, deliver
from nanovllm.values.errors import QueueFullError
from nanovllm.values.lora_request import LoRARequest
from nanovllm.values.request import EngineRequest

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
class Call:
    fn: Callable[[], object]  # run on the engine thread after its next step
    future: Future


@dataclass(slots=True)
class Stop:
    pass


Command = AddRequest | Abort | AbortAll | Call | Stop


# Seconds an idle engine thread waits for a command before it refreshes its stats once more.
IDLE_REFRESH = 0.5


class AsyncEngine:
    """Owns `engine`; call start(), then add_request/abort from any thread, then shutdown()."""

    def __init__(self, engine: LLMEngine,
                 deliver: Callable[[list[tuple[OutputSink, object]]], None] = deliver) -> None:
        self.engine = engine
        self._deliver = deliver  # hands a step's outputs to their sinks (engine_client.deliver)
        self.tokenizer = engine.tokenizer
        self.processor = engine.processor
        self.max_model_len: int = engine.max_model_len
        self.model_path, self.is_dummy = str(engine.model_path), engine.is_dummy
        self.stats = engine.get_stats()  # refreshed by the engine thread after every change
        self.error: BaseException | None = None
        self.degraded: str | None = None  # one engine serves fully or not at all
        self.replica_stats = None  # one engine: `stats` is the whole story
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._sinks: dict[str, OutputSink] = {}  # touched only by the engine thread
        self._calls: list[Call] = []  # likewise: to run after the next step
        self.held_until: float | None = None  # time.monotonic() a hold ends; None: stepping
        self._lock = threading.Lock()  # orders "refuse new work" against "enqueue work"
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=ENGINE_THREAD, daemon=True)

    @classmethod
    def from_config(cls, config: EngineConfig, **options) -> AsyncEngine:
        """Load the model on the engine thread and start stepping there; returns once it is
        loaded (or raises what loading raised).

        Loading compiles and first runs the parallel kernels, and GNU OpenMP gives each thread
        that starts parallel work a team of worker threads of its own: a model loaded on the
        caller's thread and stepped on another left two teams on the same cores, and every
        step of the engine thread ran slower for it."""
        loaded: Future[AsyncEngine] = Future()

        def load_and_run() -> None:
            try:
                client = cls(LLMEngine(config), **options)
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

    def call(self, fn: Callable[[], object]) -> Future:
        """fn() on the engine thread, between its next step and the one after (at once while
        idle or held); its result or exception in the Future (EngineDeadError or
        RequestAborted if the thread will not get to it)."""
        future: Future = Future()
        self._send(Call(fn, future), future)
        return future

    def add_lora(self, lora: LoRARequest) -> Future[bool]:
        """`LLMEngine.add_lora` between two steps (the adapter is read and checked there)."""
        return self._refusable(lambda: self.engine.add_lora(lora))

    def remove_lora(self, lora_id: int) -> Future[bool]:
        return self._refusable(lambda: self.engine.remove_lora(lora_id))

    def _refusable(self, fn: Callable[[], object]) -> Future:
        """fn() as a `call`, except that a ValueError it raises (a refused adapter: the engine
        is unharmed) goes to the Future instead of killing the engine."""
        answer: Future = Future()

        def run() -> None:
            try:
                answer.set_result(fn())
            except ValueError as exc:
                answer.set_exception(exc)

        def failed(call: Future) -> None:  # the engine died or stopped first
            if call.exception() is not None and not answer.done():
                answer.set_exception(call.exception())

        self.call(run).add_done_callback(failed)
        return answer

    def hold(self, seconds: float | None) -> None:
        """Engine thread only (from a `call`): stop stepping for `seconds` (renewed by holding
        again), or step again (None). Requests are still taken and aborted; they wait."""
        self.held_until = None if seconds is None else time.monotonic() + seconds

    def _send(self, cmd: Command, future: Future) -> None:
        """Queue `cmd` unless the engine is dead or closing: then its `future` fails at once."""
        with self._lock:
            if self.error is not None:
                _fail_future(future, EngineDeadError(f"The engine is dead: {self.error!r}"))
            elif self._closed:
                _fail_future(future, RequestAborted(SHUTTING_DOWN))
            else:
                self._inbox.put(cmd)

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
                if self.held_until is None:
                    self.run_step()
                else:
                    self.stats = self.engine.get_stats()  # requests added while held count
                self._run_calls()
        except BaseException as exc:  # noqa: BLE001 - any engine failure kills the engine
            logger.exception("engine loop crashed; marking the engine dead")
            self._die(exc)
            return
        closing = RequestAborted(SHUTTING_DOWN)
        self._fail_calls(closing)
        self._drain_inbox(closing)
        self.stats = self.engine.get_stats()

    def run_step(self) -> None:
        """One step, its outputs dispatched (engine thread only)."""
        outputs = self.engine.step() if self.engine.has_unfinished_requests() else []
        self.stats = self.engine.get_stats()  # before dispatch: never older than an output
        self._dispatch(outputs)

    def _next_commands(self) -> list[Command]:
        """Block while idle or held (a hold until its deadline); otherwise take whatever is
        queued without waiting."""
        if self.held_until is not None:
            try:
                cmds = [self._inbox.get(timeout=max(0.0, self.held_until - time.monotonic()))]
            except queue.Empty:
                logger.warning("nobody renewed the hold on the engine; stepping again")
                self.held_until = None
                cmds = []
        elif self.engine.has_unfinished_requests():
            cmds = []
        else:  # idle: wake now and then, so that the stats take in what finished beside the steps
            try:  # (the disk writer's blocks)
                cmds = [self._inbox.get(timeout=IDLE_REFRESH)]
            except queue.Empty:
                cmds = []
        while True:
            try:
                cmds.append(self._inbox.get_nowait())
            except queue.Empty:
                return cmds

    def _apply(self, cmds: list[Command]) -> bool:
        """Carries out the commands in order; False once told to stop."""
        for cmd in cmds:
            match cmd:
                case AddRequest():
                    self._add(cmd)
                case Abort(request_ids):
                    self._abort(request_ids)
                case AbortAll(reason):
                    self._abort(list(self._sinks), RequestAborted(reason))
                case Call():
                    self._calls.append(cmd)
                case Stop():
                    self._abort(list(self._sinks), RequestAborted(SHUTTING_DOWN))
                    return False
        return True

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

    def _run_calls(self) -> None:
        calls, self._calls = self._calls, []
        for call in calls:
            if not call.future.set_running_or_notify_cancel():  # the asker gave up waiting
                continue
            try:
                result = call.fn()
            except BaseException as exc:  # the caller learns why; the engine dies of it too
                call.future.set_exception(exc)
                raise
            call.future.set_result(result)

    def _dispatch(self, outputs) -> None:
        deliveries = []
        for out in outputs:
            sink = self._sinks.get(out.request_id)
            if sink is None:
                continue
            if out.finished:
                del self._sinks[out.request_id]
            deliveries.append((sink, out))
        self._deliver(deliveries)

    def _die(self, exc: BaseException) -> None:
        with self._lock:
            self.error = exc
        dead = EngineDeadError(f"The engine is dead: {type(exc).__name__}: {exc}")
        self._fail_all(dead)
        self._drain_inbox(dead)

    def _drain_inbox(self, exc: BaseException) -> None:
        """Answer adds and calls queued before the lock closed the door; nobody will run them."""
        while True:
            try:
                cmd = self._inbox.get_nowait()
            except queue.Empty:
                return
            match cmd:
                case AddRequest(accepted=future) | Call(future=future):
                    _fail_future(future, exc)

    def _fail_all(self, exc: BaseException) -> None:
        for sink in self._sinks.values():
            sink.put(exc)
        self._sinks.clear()
        self._fail_calls(exc)

    def _fail_calls(self, exc: BaseException) -> None:
        for call in self._calls:
            _fail_future(call.future, exc)
        self._calls.clear()


def _fail_future(future: Future, exc: BaseException) -> None:
    if future.set_running_or_notify_cancel():
        future.set_exception(exc)
