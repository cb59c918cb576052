"""The engine process: one AsyncEngine and its Inspector, spoken to over a socket.

The API server starts it (client.ProcessEngineClient) with one end of a socket pair and sends
the EngineConfig first; it loads the model, answers READY with what the server needs to know
of it (wire.EngineInfo), then serves frames until told to stop or until the socket closes (the
server is gone: nobody is left to serve). Its main thread reads frames and hands them to the
AsyncEngine; the engine thread steps and writes each step's outputs as one frame
(`deliver_step`), as the detokenized deltas of wire.encode_output.

Detokenizing stays here, beside the scheduler: the output processor decides a sequence's end
on its text (stop strings) and frees its blocks in the same step, and the text is work the
server's process, which holds the event loop, does not then do.

SIGINT is ignored: Ctrl-C reaches the whole process group, and the server stops its engine
itself. If the engine thread dies (an engine bug), its requests are told so and the process
exits, for the server to start another.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from concurrent.futures import Future

from nanovllm.async_engine import AsyncEngine
from nanovllm.engine_core import wire
from nanovllm.engine_core.wire import EngineInfo, FrameReader, dumps, encode_output, loads
from nanovllm.inspection import Inspector
from nanovllm.structured import GrammarCompiler

logger = logging.getLogger(__name__)

# The web page's inspection, as the server may call it: those that answer between two steps,
# and those that run a whole forward pass (on a thread of their own, never the engine's).
BETWEEN_STEPS = ("snapshot", "pause", "step", "resume")
# Seconds between looks at the stats for news that came without a step's outputs.
STATS_INTERVAL = 0.1
FORWARD_PASSES = ("attention_weights", "trace_forward")
ADAPTER_CALLS = ("add_lora", "remove_lora")  # the engine's LoRA adapters (server/lora.py)


class RemoteSink:
    """One request's OutputSink: what the other side of its outputs still holds (wire._Sent
    entries) and where an exception that ends it goes."""

    __slots__ = ("process", "request_id", "sent")

    def __init__(self, process: EngineProcess, request_id: str) -> None:
        self.process, self.request_id, self.sent = process, request_id, []

    def put(self, item) -> None:  # only exceptions: outputs go by deliver_step
        self.process.send((wire.ENDED, self.request_id, dumps(portable(item))))


class EngineProcess:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._send_lock = threading.Lock()  # the engine thread and the main thread both send
        self.client: AsyncEngine | None = None
        self._stats_sent = None  # the last EngineStats value sent
        self._grammars: GrammarCompiler | None = None  # for llguidance's vocabulary, once
        self.inspector: Inspector | None = None

    def send(self, message: tuple) -> None:
        frame = wire.encode(message)
        with self._send_lock:
            try:
                self.sock.sendall(frame)
            except OSError:  # the server is gone; the main thread sees the socket close
                pass

    def deliver_step(self, items: list[tuple[RemoteSink, object]]) -> None:
        """AsyncEngine's deliver: one step's outputs in one frame, the stats before them."""
        outputs = [encode_output(out, sink.sent) for sink, out in items]
        self._stats_sent = stats = self.client.stats
        self.send((wire.OUTPUTS, dumps(stats), outputs))

    def _send_stats(self) -> None:
        """Stats that changed between steps (requests added while paused, the disk writer's
        blocks while idle), STATS_INTERVAL after they did at most."""
        while self.client.thread.is_alive():
            time.sleep(STATS_INTERVAL)
            stats = self.client.stats  # replaced, never changed in place: `is` says "news"
            if stats is not self._stats_sent:
                self._stats_sent = stats
                self.send((wire.STATS, dumps(stats)))

    # ---- the main thread ---------------------------------------------------------------------
    def run(self) -> int:
        reader = FrameReader(self.sock)
        start = reader.read()
        if start is None:
            return 0
        _, config, step_mode, log_level = start
        logging.basicConfig(level=log_level, format="%(levelname)s %(name)s: %(message)s")
        if not self._load(loads(config), step_mode):
            return 1
        threading.Thread(target=self._exit_with_engine, daemon=True).start()
        threading.Thread(target=self._send_stats, daemon=True).start()
        while (message := reader.read()) is not None and message[0] != wire.STOP:
            self._handle(message)
        self.client.shutdown()
        return 0

    def _load(self, config, step_mode: bool) -> bool:
        try:
            self.client = AsyncEngine.from_config(config, deliver=self.deliver_step)
        except BaseException as exc:  # noqa: BLE001 - the server's to report
            # The server reports it in one line (a bad checkpoint is no crash): the traceback
            # only at debug level.
            logger.debug("the engine failed to load", exc_info=True)
            self.send((wire.READY, False, dumps(portable(exc))))
            return False
        self.inspector = Inspector(self.client, enable_step_mode=step_mode)
        self.send((wire.READY, True, dumps(EngineInfo.of(self.client, self.inspector))))
        return True

    def _handle(self, message: tuple) -> None:
        kind = message[0]
        if kind == wire.ADD:
            _, rid, request = message
            request = wire.loads_request(request, self._ll_tokenizer)
            accepted = self.client.add_request(request, RemoteSink(self, rid))
            accepted.add_done_callback(lambda f: self._answer_add(rid, f))
        elif kind == wire.ABORT:
            self.client.abort(message[1])
        elif kind == wire.ABORT_ALL:
            self.client.abort_all(message[1])
        elif kind == wire.CALL:
            self._call(message[1], message[2], loads(message[3]))

    def _ll_tokenizer(self):
        if self._grammars is None:
            self._grammars = GrammarCompiler(self.client.tokenizer)
        return self._grammars.ll_tokenizer()

    def _answer_add(self, rid: str, accepted: Future) -> None:
        exc = accepted.exception()
        self.send((wire.ACCEPTED, rid) if exc is None
                  else (wire.REFUSED, rid, dumps(portable(exc))))

    def _call(self, call_id: int, name: str, args: tuple) -> None:
        def answer(future: Future) -> None:
            exc = future.exception()
            self.send((wire.RESULT, call_id, exc is None,
                       dumps(future.result() if exc is None else portable(exc))))

        if name in FORWARD_PASSES:  # a whole forward pass: never on this thread
            future: Future = Future()
            future.add_done_callback(answer)
            threading.Thread(target=_run_into, args=(future, getattr(self.inspector, name), args),
                             daemon=True).start()
            return
        try:
            if name in ADAPTER_CALLS:  # the engine's own, between two steps
                getattr(self.client, name)(*args).add_done_callback(answer)
                return
            if name not in BETWEEN_STEPS:
                raise ValueError(f"the engine process has no call {name!r}")
            getattr(self.inspector, name)(*args).add_done_callback(answer)
        except Exception as exc:  # refused at once (step mode off, a lease out of bounds)
            self.send((wire.RESULT, call_id, False, dumps(exc)))

    def _exit_with_engine(self) -> None:
        """If the engine thread dies (not stopped: crashed), leave: the server starts another."""
        self.client.thread.join()
        if self.client.error is not None:
            logger.error("the engine thread died; the engine process exits")
            os._exit(1)


def portable(exc: BaseException) -> BaseException:
    """`exc`, or a RuntimeError saying it, if it cannot be rebuilt on the other side."""
    try:
        loads(dumps(exc))
    except Exception:  # an exception whose arguments do not rebuild it
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc


def _run_into(future: Future, fn, args: tuple) -> None:
    try:
        future.set_result(fn(*args))
    except BaseException as exc:  # noqa: BLE001 - the caller's to handle
        future.set_exception(exc)


def main(fd: int) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with socket.socket(fileno=fd) as sock:
        return EngineProcess(sock).run()
