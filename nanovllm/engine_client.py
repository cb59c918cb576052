"""EngineClient: everything the HTTP server asks of an engine, whoever runs it and wherever.

The server holds one of these for serving: it checks a request once with `processor.process`
(an EngineRequest), submits that with `add_request` and a sink of its own (the returned Future
says whether the engine took it), and reads the tokenizer, limits and the latest stats. Two
implementations: a thread in this process (async_engine.AsyncEngine), and one that forwards to
engine replicas on Ray Serve (server/ray/client.RayEngineClient); only values and the server's
own sink cross it. The web page's views of one engine are another interface, beside this one
(inspection.EngineInspector).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:  # for annotations only: the server imports this module before any engine
    from concurrent.futures import Future

    from nanovllm.input_processor import InputProcessor
    from nanovllm.stats import EngineStats
    from nanovllm.tokenizer import Tokenizer
    from nanovllm.values.lora_request import LoRARequest
    from nanovllm.values.outputs import RequestOutput
    from nanovllm.values.request import EngineRequest


class EngineDeadError(RuntimeError):
    """The engine crashed; no request can be served any more."""


class RequestAborted(RuntimeError):
    """The server gave up the request: it is shutting down, or the engine replica serving it
    failed while others still serve. Its text is for the client."""


class OutputSink(Protocol):
    """Where one accepted request's news goes, in order: its cumulative RequestOutputs up to the
    finished one; or, at any point, an exception that ends it (RequestAborted, EngineDeadError,
    or an engine bug's own error). An abort by `abort` ends it silently. `put` must not block
    and may be called from any thread."""

    def put(self, item: RequestOutput | BaseException) -> None: ...


@dataclass(slots=True)
class QueueSink:
    """The OutputSink of one engine request: (tag, item) pairs into an asyncio.Queue on `loop`,
    from whichever thread the engine delivers on."""

    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    tag: int

    def put(self, item: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (self.tag, item))
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            pass


def deliver(items: list[tuple[OutputSink, Any]]) -> None:
    """Puts each item into its sink, in order: the QueueSinks of one event loop in one callback
    on it, so that a step's outputs wake the loop once rather than once per request."""
    batches: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, tuple]]] = {}
    for sink, item in items:
        if isinstance(sink, QueueSink):
            batches.setdefault(sink.loop, []).append((sink.queue, (sink.tag, item)))
        else:
            sink.put(item)
    for loop, puts in batches.items():
        try:
            loop.call_soon_threadsafe(_put_all, puts)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            pass


def _put_all(puts: list[tuple[asyncio.Queue, tuple]]) -> None:
    for queue, entry in puts:
        queue.put_nowait(entry)


@runtime_checkable  # isinstance checks that every member is there (tests do)
class EngineClient(Protocol):
    tokenizer: Tokenizer      # the engine's, for the server's own encoding and decoding
    processor: InputProcessor  # checks a request once, into the EngineRequest add_request takes
    max_model_len: int        # (the processor's other limits: processor.vocab_size, ...)
    model_path: str           # where the weights came from
    is_dummy: bool            # random weights (a dummy checkpoint): the text is noise
    stats: EngineStats        # as of a moment never older than the last output delivered
    error: BaseException | None  # why the engine died, once it has

    @property
    def is_alive(self) -> bool: ...

    @property
    def degraded(self) -> str | None:
        """Why requests are served at reduced capacity (some replicas down), else None."""

    @property
    def replica_stats(self) -> Mapping[str, EngineStats] | None:
        """Each engine replica's latest stats, by replica id, when there are several; else None."""

    def add_request(self, request: EngineRequest, sink: OutputSink) -> Future[None]:
        """Queue a checked request whose news goes to `sink`. The Future is done once the engine
        took it, or failed with why it did not (QueueFullError, EngineDeadError, RequestAborted,
        or an engine bug's own error); only a request it took ever reaches `sink`."""

    def add_lora(self, lora: LoRARequest) -> Future[bool]:
        """Load a LoRA adapter (`LLMEngine.add_lora`, between two steps): the Future fails with
        the AdapterError naming it, the engine unharmed, if it cannot run on this model."""

    def remove_lora(self, lora_id: int) -> Future[bool]:
        """Unload one (`LLMEngine.remove_lora`; refused while requests use it)."""

    def abort(self, request_ids: list[str]) -> None:
        """Withdraw requests (their KV blocks are freed); unknown or finished ids are ignored."""

    def abort_all(self, reason: str) -> None:
        """Withdraw every request; each sink gets RequestAborted(reason)."""

    def shutdown(self, timeout: float = 10.0) -> None: ...
