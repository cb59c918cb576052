"""scripts/http_client.py, the serving benchmarks' HTTP/1.1 client, against small asyncio servers
that answer as uvicorn does (chunked streams, Content-Length bodies) or close idle connections."""

from __future__ import annotations

import asyncio

from nanovllm.scripts.http_client import Client, new_event_loop


async def _serve(answer: bytes, close: bool):
    """A server answering every request with `answer`; `close`: then it hangs up."""
    connections = []

    async def handle(reader, writer):
        connections.append(writer)
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = [line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")]
            await reader.readexactly(int(length[0].split(b":")[1]) if length else 0)
            writer.write(answer)
            await writer.drain()
            if close:
                writer.close()
                return

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", connections


def test_streamed_lines_across_chunks_and_a_reused_connection():
    # Events split across chunk boundaries, a chunk extension, and a trailer.
    body = b"7\r\ndata: a\r\n6;x=1\r\n\n\ndata\r\n8\r\n: [DONE]\r\n2\r\n\n\n\r\n0\r\nX-T: 1\r\n\r\n"
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body

    async def main():
        server, url, connections = await _serve(answer, close=False)
        client = Client(url, {"Authorization": "Bearer k"})
        for _ in range(3):
            async with client.request("POST", "/v1/completions", {"prompt": [1]}) as response:
                assert response.status == 200
                assert [line async for line in response.lines()] == \
                    [b"data: a", b"", b"data: [DONE]", b""]
        await client.aclose()
        server.close()
        return len(connections)

    assert new_event_loop().run_until_complete(main()) == 1  # keep-alive: one connection


def test_a_connection_the_server_closed_while_idle_is_replaced():
    answer = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 2\r\n\r\nno"

    async def main():
        server, url, connections = await _serve(answer, close=True)
        client = Client(url)
        for _ in range(3):
            async with client.request("GET", "/v1/models") as response:
                assert (response.status, await response.read()) == (400, b"no")
        await client.aclose()
        server.close()
        return len(connections)

    assert asyncio.run(main()) == 3
