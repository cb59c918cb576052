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

from nanovllm.engine_client import EngineClient
from nanovllm.server.metrics import RequestTracker
from nanovllm.values.request import EngineRequest


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
    def __init__(self, engine: EngineClient, request_id: str, requests: list[EngineRequest],
                 n: int, tracker: RequestTracker | None = None) -> None:
        self._engine = engine
        self._queue: asyncio.Queue = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        self.request_id = request_id
        self.requests = requests
        self.request_ids = [r.request_id for r in requests]
        self._n = n
        self._tracker = tracker
        self._unfinished = set(range(len(requests)))
        self._pending: dict = {}
        self._closed = False

    @property
    def done(self) -> bool:
        return not self._unfinished and not self._pending

    async def submit(self) -> None:
        """Hand every engine request to the engine; returns once all were taken (raises why
        one was not: the caller closes the stream, which withdraws the others)."""
        accepted = [self._engine.add_request(r, QueueSink(self._loop, self._queue, tag))
                    for tag, r in enumerate(self.requests)]
        for future in accepted:
            await asyncio.wrap_future(future)

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
