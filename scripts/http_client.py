"""The serving benchmarks' HTTP/1.1 client, on asyncio's own streams: a JSON request, its answer
read whole or line by line as it streams (chunked transfer encoding), keep-alive connections
reused.

Only what `bench serve` needs. On a small machine the client shares the cores with the server
it measures, so every CPU-microsecond it spends per streamed chunk is taken from the engine; a
general-purpose client spends several times what this one does.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop where it is installed (uvicorn[standard] brings it), which spends
    less CPU per wake-up than asyncio's own; else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class ProtocolError(OSError):
    """The server's answer is not HTTP/1.1 as this client reads it."""


class Response:
    """A response whose body is still on the connection: read it with `read` or `lines`."""

    def __init__(self, reader: asyncio.StreamReader, status: int, headers: dict[str, str]):
        self.status, self.headers = status, headers
        self._reader = reader
        self.complete = False  # the whole body was read: the connection can carry another
        self.chunked = headers.get("transfer-encoding", "").lower() == "chunked"
        length = headers.get("content-length")
        self._length = int(length) if length is not None and not self.chunked else None
        self.keep_alive = (headers.get("connection", "").lower() != "close"
                           and (self.chunked or self._length is not None))

    async def pieces(self) -> AsyncIterator[bytes]:
        """The body as it arrives (a chunk at a time when chunked)."""
        read = self._reader
        if self.chunked:
            while size := int((await read.readline()).split(b";", 1)[0], 16):
                yield (await read.readexactly(size + 2))[:-2]  # the chunk and its CRLF
            while (await read.readline()).strip():  # trailers, then the blank line
                pass
        elif self._length is not None:
            yield await read.readexactly(self._length)
        else:  # the body ends with the connection
            yield await read.read()
        self.complete = True

    async def read(self) -> bytes:
        return b"".join([piece async for piece in self.pieces()])

    async def lines(self) -> AsyncIterator[bytes]:
        """The body's lines without their newlines (server-sent events are lines)."""
        rest = b""
        async for piece in self.pieces():
            *lines, rest = (rest + piece).split(b"\n")
            for line in lines:
                yield line
        if rest:
            yield rest


Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class Client:
    """Requests to one server (`base_url`, http or https), each on an idle keep-alive
    connection or a new one; `headers` go with every request."""

    def __init__(self, base_url: str, headers: dict[str, str] | None = None,
                 connect_timeout: float = 10.0) -> None:
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.host, self.prefix = url.hostname, url.path.rstrip("/")
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self._ssl = ssl.create_default_context() if url.scheme == "https" else None
        host = url.netloc.rsplit("@", 1)[-1]
        self._head = f"Host: {host}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in
                                                  (headers or {}).items())
        self.connect_timeout = connect_timeout
        self._idle: list[Connection] = []

    @asynccontextmanager
    async def request(self, method: str, path: str, body: dict | None = None
                      ) -> AsyncIterator[Response]:
        payload = json.dumps(body).encode() if body is not None else b""
        head = (f"{method} {self.prefix}{path} HTTP/1.1\r\n{self._head}"
                f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n")
        conn, response = await self._send(head.encode() + payload)
        try:
            yield response
        finally:
            if response.complete and response.keep_alive:
                self._idle.append(conn)
            else:
                conn[1].close()

    async def _send(self, message: bytes) -> tuple[Connection, Response]:
        """Sends on an idle connection, or a new one if the server closed them all meanwhile."""
        while self._idle:
            conn = self._idle.pop()
            try:
                return conn, await _exchange(conn, message)
            except (ConnectionError, asyncio.IncompleteReadError, ProtocolError):
                conn[1].close()  # closed while idle: the server never read the request
        conn = await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port, ssl=self._ssl), self.connect_timeout)
        try:
            return conn, await _exchange(conn, message)
        except BaseException:
            conn[1].close()
            raise

    async def aclose(self) -> None:
        for _, writer in self._idle:
            writer.close()
        self._idle.clear()


async def _exchange(conn: Connection, message: bytes) -> Response:
    """Writes a request and reads the head of its response."""
    reader, writer = conn
    writer.write(message)
    await writer.drain()
    status_line = await reader.readline()
    parts = status_line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise ProtocolError(f"not an HTTP/1.1 response: {status_line[:80]!r}")
    headers = {}
    while (line := await reader.readline()).strip():
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return Response(reader, int(parts[1]), headers)
