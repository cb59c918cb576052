"""The stored responses of POST /v1/responses (`store`, OpenAI's default): each response object
with the context it answered, in memory, bounded in count and bytes, the oldest evicted first.

`previous_response_id` continues from a stored response: its context and its output become the
start of the next request's. Nothing survives a restart, and separate server processes (behind
a load balancer) each have their own store; docs/api.md says so.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass


@dataclass(slots=True)
class StoredResponse:
    response: dict  # the response object, as GET /v1/responses/{id} answers it
    context: list[dict]  # the input items it answered, previous responses' included
    size: int  # bytes of both as JSON: what the store's byte bound counts


class ResponseStore:
    """Insertion-ordered, so eviction takes the oldest; only the event loop's thread uses it."""

    def __init__(self, max_items: int, max_bytes: int) -> None:
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, StoredResponse] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def put(self, response: dict, context: list[dict]) -> None:
        """Keep `response` (under its id), evicting the oldest until both bounds hold; a
        response larger than the whole byte bound is not kept."""
        size = len(json.dumps(response)) + len(json.dumps(context))
        self.delete(response["id"])
        if size > self.max_bytes:
            return
        self._items[response["id"]] = StoredResponse(response, context, size)
        self._bytes += size
        while len(self._items) > self.max_items or self._bytes > self.max_bytes:
            _, oldest = self._items.popitem(last=False)
            self._bytes -= oldest.size

    def get(self, response_id: str) -> StoredResponse | None:
        return self._items.get(response_id)

    def delete(self, response_id: str) -> bool:
        stored = self._items.pop(response_id, None)
        if stored is None:
            return False
        self._bytes -= stored.size
        return True
