"""The asyncio side of one HTTP request: its engine requests (one per prompt) and their outputs.

Outputs are cumulative, so when a handler falls behind, the queued outputs of an engine
request are coalesced into the latest one. close() aborts whatever is still unfinished;
every handler calls it in a `finally`, which is how a disconnected client frees its KV
blocks at once.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from nanovllm import SamplingParams
from nanovllm.engine_client import ACCEPTED, EngineClient
from nanovllm.server.metrics import RequestTracker


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


class RequestStream:
    def __init__(self, engine: EngineClient, request_id: str, num_prompts: int, n: int,
                 tracker: RequestTracker | None = None) -> None:
        self._engine = engine
        self._queue: asyncio.Queue = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        self.request_id = request_id
        self.request_ids = [f"{request_id}-{i}" for i in range(num_prompts)]
        self._n = n
        self._tracker = tracker
        self._unaccepted = set(range(num_prompts))
        self._unfinished = set(range(num_prompts))
        self._pending: dict = {}
        self._closed = False

    @property
    def done(self) -> bool:
        return not self._unfinished and not self._pending

    async def submit(self, prompts: list[list[int]], params: SamplingParams) -> None:
        """Hand every prompt to the engine; returns once all were accepted (raises if not)."""
        for tag, (rid, prompt) in enumerate(zip(self.request_ids, prompts, strict=True)):
            sink = QueueSink(self._loop, self._queue, tag)
            self._engine.add_request(rid, prompt, params, sink)
        while self._unaccepted:
            self._absorb([await self._queue.get()])

    async def next_batch(self) -> dict:
        """Wait for new outputs; returns {tag: latest RequestOutput}. Raises pushed errors."""
        if not self._pending:
            self._absorb([await self._queue.get()])
        items = []
        while not self._queue.empty():
            items.append(self._queue.get_nowait())
        self._absorb(items)
        batch, self._pending = self._pending, {}
        return batch

    async def final_outputs(self) -> dict:
        """Wait until every engine request finished; returns {tag: final RequestOutput}."""
        final = {}
        while not self.done:
            final.update(await self.next_batch())
        return final

    def _absorb(self, items: list) -> None:
        for tag, item in items:
            if isinstance(item, BaseException):
                self._unfinished.discard(tag)
                raise item
            if isinstance(item, str) and item == ACCEPTED:
                self._unaccepted.discard(tag)
                continue
            self._pending[tag] = item
            if item.finished:
                self._unfinished.discard(tag)
            if self._tracker is not None:
                self._tracker.observe(tag, item)

    def close(self) -> None:
        """Abort every unfinished engine request (idempotent; safe after errors)."""
        if self._closed:
            return
        self._closed = True
        if self._unfinished:
            self._engine.abort([self.request_ids[t] for t in sorted(self._unfinished)])
            if self._tracker is not None:
                for tag in self._unfinished:
                    self._tracker.aborted(tag, self._n)
            self._unfinished.clear()
