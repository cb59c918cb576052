"""ProcessEngineClient: the EngineClient of an engine in a child process (proc.py).

The server's process keeps the HTTP side, the tokenizer and the input processor (a copy of the
engine's, sent once it loaded); the engine process schedules, runs the model and detokenizes.
A supervisor thread reads the engine's frames: whether each request was taken, each step's
outputs (rebuilt by wire.OutputDecoder and delivered a step at a time, engine_client.deliver),
the exceptions that end requests, and the answers to the web page's calls.

If the engine process dies (killed, out of memory, an engine bug), every request it held ends
with RequestAborted (a 503 in the API's shape, or an error event in a stream) and the supervisor
starts another; requests that come meanwhile wait for it (/health says "degraded"). Only an
engine that had loaded is restarted: one that fails to load makes the client dead (`error`).
`shutdown` stops the engine process and waits for it; the engine process also leaves by itself
when the server's end of the socket closes, so no signal leaves it behind.

Each client runs one engine process: a server with several models holds one client per model.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import nanovllm
from nanovllm.config import EngineConfig
from nanovllm.engine_client import EngineDeadError, OutputSink, RequestAborted, deliver
from nanovllm.engine_core import wire
from nanovllm.engine_core.wire import EngineInfo, FrameReader, OutputDecoder, dumps, loads
from nanovllm.snapshot import EngineSnapshot
from nanovllm.step_record import DEFAULT_PAUSE_LEASE, StepMode, StepModeDisabled
from nanovllm.values.request import EngineRequest

logger = logging.getLogger(__name__)

SHUTTING_DOWN = "The server is shutting down."
RESTARTING = "The engine process stopped ({}) while serving this request; it is being restarted."
STOP_TIMEOUT = 10.0  # seconds the engine process has to stop before it is killed


@dataclass(slots=True)
class _Pending:
    sink: OutputSink | None  # None once aborted: nothing more reaches it
    accepted: Future


class EngineProcessHandle:
    """One running engine process and the server's end of its socket."""

    def __init__(self, config: EngineConfig, step_mode: bool) -> None:
        ours, theirs = socket.socketpair()
        package_root = str(Path(nanovllm.__file__).resolve().parent.parent)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            p for p in (package_root, os.environ.get("PYTHONPATH")) if p))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "nanovllm.engine_core", str(theirs.fileno())],
            pass_fds=[theirs.fileno()], env=env)
        theirs.close()
        self.sock, self.reader = ours, FrameReader(ours)
        self.sock.sendall(wire.encode((wire.START, dumps(config), step_mode,
                                       logging.getLogger().level)))

    def wait_ready(self) -> EngineInfo:
        """Once loaded, what the engine says of itself; raises why it did not load."""
        message = self.reader.read()
        if message is None:
            raise EngineDeadError(f"The engine process exited ({self.exit_status()}) "
                                  "before it loaded the model.")
        _, ok, blob = message
        if not ok:
            raise loads(blob)
        return loads(blob)

    def exit_status(self) -> str:
        code = self.process.wait()
        return f"signal {-code}" if code < 0 else f"exit code {code}"

    def stop(self, timeout: float) -> None:
        """Waits `timeout` seconds for the process to end, then kills it."""
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            if timeout:
                logger.warning("the engine process did not stop in %.0f s; killing it", timeout)
            self.process.kill()
            self.process.wait()
        self.sock.close()


class ProcessEngineClient:
    """An EngineClient over an engine process; `inspector` is the web page's view of it."""

    def __init__(self, config: EngineConfig, enable_step_mode: bool = False) -> None:
        self.config, self.enable_step_mode = config, enable_step_mode
        self.error: BaseException | None = None
        self.degraded: str | None = None  # why requests wait: the engine process restarts
        self.replica_stats = None  # one engine: `stats` is the whole story
        self.restarts = 0  # engine processes started after the first
        self._lock = threading.Lock()  # orders sends against restarts and closing
        self._requests: dict[str, _Pending] = {}
        self._calls: dict[int, Future] = {}
        self._call_ids = itertools.count()
        self._decoder = OutputDecoder()
        self._backlog: list[bytes] | None = None  # frames for an engine still starting
        self._closed = False
        self._engine = EngineProcessHandle(config, enable_step_mode)
        try:
            info = self._engine.wait_ready()
        except BaseException:  # a load that failed, or Ctrl-C while loading
            self._engine.stop(0)
            raise
        self.processor, self.tokenizer = info.processor, info.processor.tokenizer
        self.max_model_len, self.model_path, self.is_dummy = (
            info.max_model_len, info.model_path, info.is_dummy)
        self.stats = info.stats
        self.inspector = ProcessInspector(self, info.shape, enable_step_mode)
        self._supervisor = threading.Thread(target=self._supervise, name="nanovllm-engine-io",
                                            daemon=True)
        self._supervisor.start()

    @property
    def pid(self) -> int:
        """The engine process's (the running one's)."""
        return self._engine.process.pid

    @property
    def is_alive(self) -> bool:
        return self.error is None and not self._closed

    # ---- the EngineClient's requests ---------------------------------------------------------
    def add_request(self, request: EngineRequest, sink: OutputSink) -> Future[None]:
        accepted: Future[None] = Future()
        rid = request.request_id
        with self._lock:
            if failed := self._refusal():
                accepted.set_exception(failed)
                return accepted
            self._requests[rid] = _Pending(sink, accepted)
            self._decoder.start(rid, request.prompt, request.prompt_token_ids)
            self._send((wire.ADD, rid, wire.dumps_request(request)))
        return accepted

    def abort(self, request_ids: list[str]) -> None:
        if not request_ids:
            return
        with self._lock:
            for rid in request_ids:
                pending = self._requests.get(rid)
                if pending is not None:
                    pending.sink = None
                    if pending.accepted.done():
                        self._forget(rid)
            self._send((wire.ABORT, list(request_ids)))

    def abort_all(self, reason: str) -> None:
        with self._lock:
            self._send((wire.ABORT_ALL, reason))

    def call(self, name: str, *args) -> Future:
        """The engine's Inspector's `name`(*args) (proc.py lists them), its answer in the Future."""
        future: Future = Future()
        with self._lock:
            if failed := self._refusal():
                future.set_exception(failed)
                return future
            call_id = next(self._call_ids)
            self._calls[call_id] = future
            self._send((wire.CALL, call_id, name, dumps(args)))
        return future

    def add_lora(self, lora) -> Future[bool]:
        """`LLMEngine.add_lora` in the engine process, between two steps."""
        return self.call("add_lora", lora)

    def remove_lora(self, lora_id: int) -> Future[bool]:
        return self.call("remove_lora", lora_id)

    def shutdown(self, timeout: float = STOP_TIMEOUT) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._send((wire.STOP,))
        self._supervisor.join(timeout)
        self._engine.stop(timeout)
        self._end_all(RequestAborted(SHUTTING_DOWN))

    # ---- sending (with the lock held) --------------------------------------------------------
    def _refusal(self) -> BaseException | None:
        if self.error is not None:
            return EngineDeadError(f"The engine is dead: {self.error!r}")
        if self._closed:
            return RequestAborted(SHUTTING_DOWN)
        return None

    def _send(self, message: tuple) -> None:
        frame = wire.encode(message)
        if self._backlog is not None:
            self._backlog.append(frame)
            return
        try:
            self._engine.sock.sendall(frame)
        except OSError:  # the engine process died: the supervisor is about to find out
            pass

    def _forget(self, rid: str) -> None:
        self._requests.pop(rid, None)
        self._decoder.forget(rid)

    # ---- the supervisor thread ---------------------------------------------------------------
    def _supervise(self) -> None:
        while True:
            while (message := self._engine.reader.read()) is not None:
                self._receive(message)
            status = self._engine.exit_status()
            if self._closed:
                return
            if not self._restart(status):
                return

    def _receive(self, message: tuple) -> None:
        kind = message[0]
        if kind == wire.OUTPUTS:
            self._deliver_step(message[1], message[2])
        elif kind == wire.STATS:
            self.stats = loads(message[1])
        elif kind == wire.ACCEPTED:
            self._accepted(message[1])
        elif kind in (wire.REFUSED, wire.ENDED):
            with self._lock:
                pending = self._requests.get(message[1])
                self._forget(message[1])
            if pending is None:
                return
            exc = loads(message[2])
            if kind == wire.REFUSED:
                pending.accepted.set_exception(exc)
            elif pending.sink is not None:
                pending.sink.put(exc)
        elif kind == wire.RESULT:
            _, call_id, ok, blob = message
            with self._lock:
                future = self._calls.pop(call_id, None)
            if future is not None:
                (future.set_result if ok else future.set_exception)(loads(blob))

    def _deliver_step(self, stats: bytes, items: list[tuple]) -> None:
        self.stats = loads(stats)  # before the outputs: never older than one delivered
        deliveries = []
        with self._lock:
            for item in items:
                pending = self._requests.get(item[0])
                out = self._decoder.decode(item)
                if pending is None or out is None or pending.sink is None:
                    continue
                if out.finished:
                    self._requests.pop(item[0])
                deliveries.append((pending.sink, out))
        deliver(deliveries)

    def _accepted(self, rid: str) -> None:
        with self._lock:
            pending = self._requests.get(rid)
            if pending is not None and pending.sink is None:  # aborted before it was taken
                self._forget(rid)
        if pending is not None:
            pending.accepted.set_result(None)

    def _restart(self, status: str) -> bool:
        """After the engine process died: end what it held, start another. False if that one
        did not load (the client is then dead)."""
        logger.error("the engine process stopped (%s); starting another", status)
        with self._lock:
            self._backlog = []
            self.degraded = f"The engine process stopped ({status}); another is starting."
            lost = self._take_all()
        self._end(lost, RequestAborted(RESTARTING.format(status)))
        self._engine.sock.close()
        try:
            engine = EngineProcessHandle(self.config, self.enable_step_mode)
            engine.wait_ready()
        except BaseException as exc:  # noqa: BLE001 - the engine cannot be served any more
            logger.exception("the engine process failed to start again")
            with self._lock:
                self.error, self.degraded = exc, None
                lost = self._take_all()
            self._end(lost, EngineDeadError(f"The engine is dead: {exc!r}"))
            return False
        with self._lock:
            self._engine, self.restarts = engine, self.restarts + 1
            backlog, self._backlog, self.degraded = self._backlog, None, None
            for frame in backlog:
                self._send_frame(frame)
        logger.info("engine process %d serving again", engine.process.pid)
        return True

    def _send_frame(self, frame: bytes) -> None:
        try:
            self._engine.sock.sendall(frame)
        except OSError:
            pass

    def _take_all(self) -> tuple[list[_Pending], list[Future]]:
        requests, calls = list(self._requests.values()), list(self._calls.values())
        self._requests.clear()
        self._calls.clear()
        self._decoder = OutputDecoder()
        return requests, calls

    def _end(self, lost: tuple[list[_Pending], list[Future]], exc: BaseException) -> None:
        requests, calls = lost
        for pending in requests:
            if not pending.accepted.done():
                pending.accepted.set_exception(exc)
            elif pending.sink is not None:
                pending.sink.put(exc)
        for future in calls:
            if not future.done():
                future.set_exception(exc)

    def _end_all(self, exc: BaseException) -> None:
        with self._lock:
            lost = self._take_all()
        self._end(lost, exc)


class ProcessInspector:
    """The EngineInspector of a ProcessEngineClient: each view is a call into the engine
    process's own Inspector. Step mode's state is the last answer's, its lease counted down
    here (a new engine process starts unpaused)."""

    def __init__(self, client: ProcessEngineClient, shape: tuple[int, int, int],
                 enable_step_mode: bool) -> None:
        self.client = client
        self.n_layer, self.n_head, self.num_kv_heads = shape
        self.step_mode_enabled = enable_step_mode
        self._mode: StepMode | None = None
        self._mode_at = (0.0, 0)  # time.monotonic() it came, and the client's restarts then

    @property
    def step_mode(self) -> StepMode:
        num_steps = self.client.stats.num_steps_total
        at, restarts = self._mode_at
        mode = self._mode
        if mode is None or restarts != self.client.restarts:
            return StepMode(False, 0.0, None if mode is None else mode.record, num_steps)
        left = max(0.0, mode.lease_left - (time.monotonic() - at))
        return StepMode(mode.paused and left > 0, left, mode.record, num_steps)

    def snapshot(self) -> Future[EngineSnapshot]:
        return self.client.call("snapshot")

    def attention_weights(self, token_ids: list[int]):
        return self.client.call("attention_weights", token_ids).result()

    def trace_forward(self, token_ids: list[int]):
        return self.client.call("trace_forward", token_ids).result()

    def pause(self, lease: float = DEFAULT_PAUSE_LEASE) -> Future[StepMode]:
        return self._step_call("pause", lease)

    def step(self, lease: float = DEFAULT_PAUSE_LEASE) -> Future[StepMode]:
        return self._step_call("step", lease)

    def resume(self) -> Future[StepMode]:
        return self._step_call("resume")

    def _step_call(self, name: str, *args) -> Future[StepMode]:
        if not self.step_mode_enabled:  # refused here too, as the engine's Inspector would
            raise StepModeDisabled("Step mode is off: start the server with --enable-step-mode.")
        future = self.client.call(name, *args)
        future.add_done_callback(self._remember)
        return future

    def _remember(self, future: Future) -> None:
        if future.exception() is None:
            self._mode, self._mode_at = future.result(), (time.monotonic(), self.client.restarts)
