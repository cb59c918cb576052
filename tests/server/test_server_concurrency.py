"""Many concurrent clients, and clients that go away: every KV block must come back."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator

import httpx
import pytest
from server_helpers import MODEL, NUM_KV_BLOCKS, LiveServer, metric, serve, wait_idle

from nanovllm import EngineConfig, LLMEngine
from nanovllm.async_engine import AsyncEngine
from nanovllm.inspection import Inspector
from nanovllm.server.app import build_app

CLIENTS = 64


async def stream_one(aclient, i: int) -> tuple[str, str | None]:
    stream = await aclient.completions.create(
        model=MODEL, prompt=f"Client number {i} says", max_tokens=12 + i % 5, temperature=1.0,
        seed=i, stream=True, extra_body={"ignore_eos": True})
    parts, finish = [], None
    async for chunk in stream:
        for choice in chunk.choices:
            parts.append(choice.text)
            finish = choice.finish_reason or finish
    return "".join(parts), finish


async def health_answers(url: str, stop: asyncio.Event) -> int:
    """How many /health probes are answered while the streams run: the HTTP side must keep
    answering while the engine computes (counted, not timed: the machine's speed varies)."""
    answered = 0
    async with httpx.AsyncClient(base_url=url) as c:
        while not stop.is_set():
            assert (await c.get("/health")).status_code == 200
            answered += 1
            await asyncio.sleep(0.02)
    return answered


def test_64_concurrent_streams_complete_and_free_every_block(aclient, client, live):
    async def main():
        stop = asyncio.Event()
        probe = asyncio.create_task(health_answers(live.url, stop))
        results = await asyncio.gather(*(stream_one(aclient, i) for i in range(CLIENTS)))
        stop.set()
        return results, await probe

    results, answered = asyncio.run(main())
    assert all(finish == "length" for _, finish in results)
    for i in (0, 17, 63):  # the batched, streamed text is what the same seed gives alone
        ref = client.completions.create(model=MODEL, prompt=f"Client number {i} says",
                                        max_tokens=12 + i % 5, temperature=1.0, seed=i,
                                        extra_body={"ignore_eos": True})
        assert results[i][0] == ref.choices[0].text
    assert answered >= 3  # 64 streams of 12-16 tokens take many engine steps
    stats = wait_idle(live.engine)
    assert stats.num_free_blocks == stats.num_total_blocks
    metrics = httpx.get(f"{live.url}/metrics").text
    assert metric(metrics, "vllm:kv_cache_usage_perc") == 0.0
    assert metric(metrics, "vllm:num_requests_running") == 0.0


LONG_BODY = {"model": MODEL, "prompt": "Tell me a very long story", "max_tokens": 230,
             "n": 4, "ignore_eos": True}


@pytest.fixture(scope="module")
def paused_engine(tiny_ckpt) -> Iterator[AsyncEngine]:
    """An engine that steps only when told (step mode, through its inspector), so a request can
    wait in it, or stay running between two steps, for as long as a test likes, however fast
    the machine: nothing but an abort takes it out."""
    engine = AsyncEngine(LLMEngine(EngineConfig(str(tiny_ckpt), num_kv_blocks=NUM_KV_BLOCKS)))
    yield engine.start()
    engine.shutdown()


@pytest.fixture(scope="module")
def stepper(paused_engine) -> Inspector:
    return Inspector(paused_engine, enable_step_mode=True)


# The path from a closed socket to the engine is event-driven (the disconnect is heard, the
# abort wakes the paused engine thread): this bounds a hang, not a speed.
ABORT_DEADLINE = 30


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + ABORT_DEADLINE
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


@pytest.fixture
def paused_server(paused_engine, stepper) -> Iterator[LiveServer]:
    """A server over the paused engine; the engine resumes after the test."""
    srv = serve(build_app(paused_engine, served_model_name=MODEL), paused_engine)
    stepper.pause(lease=4 * ABORT_DEADLINE).result(timeout=60)
    yield srv
    stepper.resume().result(timeout=60)
    srv.stop()


def aborted(srv) -> tuple[int, float]:
    text = httpx.get(f"{srv.url}/metrics").text
    return srv.engine.stats.num_aborted_total, metric(text, "vllm:request_success_total",
                                                      finished_reason="abort")


def test_client_disconnecting_mid_stream_aborts_its_request(paused_server, stepper):
    """A running request (one step taken: its first tokens streamed, its blocks held) whose
    client leaves is aborted; the engine steps only when told, so it cannot finish first."""
    srv, engine = paused_server, paused_server.engine
    engine_before, metric_before = aborted(srv)
    with httpx.Client(base_url=srv.url, timeout=30) as c:
        for i in range(3):
            with c.stream("POST", "/v1/completions", json={**LONG_BODY, "stream": True}) as r:
                assert r.status_code == 200  # the engine took it
                stepper.step().result(timeout=60)  # the prefill, and a first token each
                lines = r.iter_lines()
                assert next(line for line in lines if line.startswith("data: {"))
                assert stepper.snapshot().result(timeout=60).num_running >= 1  # (its first sample)
            # leaving the block closes the connection mid-stream
            wait_for(lambda i=i: engine.stats.num_aborted_total == engine_before + i + 1,
                     "the streamed request was not aborted")
    stats = wait_idle(engine)
    engine_after, metric_after = aborted(srv)
    assert engine_after - engine_before == 3
    assert metric_after - metric_before == 3 * LONG_BODY["n"]  # one per choice
    assert stats.num_free_blocks == stats.num_total_blocks


def test_client_disconnecting_while_waiting_for_a_full_response_aborts(paused_server, stepper):
    """The same for a client waiting for a whole response: no output is written until the end,
    so the server must hear the disconnect itself. (A raw socket: the client leaves when the
    test says, not when a timeout says.)"""
    srv, engine = paused_server, paused_server.engine
    engine_before, _ = aborted(srv)
    body = json.dumps(LONG_BODY).encode()
    with socket.create_connection(("127.0.0.1", int(srv.url.rsplit(":", 1)[1]))) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: test\r\n"
                     b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                     % (len(body), body))
        wait_for(lambda: engine.stats.num_waiting == 1, "the request did not reach the engine")
        stepper.step().result(timeout=60)
        assert stepper.snapshot().result(timeout=60).num_running >= 1  # (its first sample)
    wait_for(lambda: engine.stats.num_aborted_total == engine_before + 1,
             "the running request was not aborted")
    stats = wait_idle(engine)
    assert stats.num_free_blocks == stats.num_total_blocks


def claiming(app, spec_version: str):
    """`app` called as an ASGI server of `spec_version` calls it: uvicorn says 2.3, and from
    2.4 on Starlette no longer listens for the client leaving a stream (only a write fails)."""
    async def asgi(scope, receive, send):
        if scope["type"] == "http":
            scope = {**scope, "asgi": {**scope.get("asgi", {}), "spec_version": spec_version}}
        await app(scope, receive, send)
    return asgi


@pytest.mark.parametrize("spec_version", ["2.3", "2.4"])
@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
def test_a_client_leaving_while_its_request_waits_aborts_it(paused_engine, stepper, spec_version,
                                                            stream):
    """No output is coming (the engine is paused), so the server must hear the disconnect
    itself, not at its next write."""
    engine = paused_engine
    srv = serve(claiming(build_app(engine, served_model_name=MODEL), spec_version), engine)
    body = {"model": MODEL, "prompt": "Nobody will read this", "max_tokens": 8,
            "stream": stream}
    stepper.pause(lease=2 * ABORT_DEADLINE).result(timeout=60)
    try:
        before = engine.stats.num_aborted_total
        with httpx.Client(base_url=srv.url, timeout=httpx.Timeout(60, read=0.5)) as c:
            if stream:
                with c.stream("POST", "/v1/completions", json=body) as r:
                    assert r.status_code == 200  # the engine took it: the stream has begun
                    assert engine.stats.num_waiting == 1
            else:
                with pytest.raises(httpx.ReadTimeout):
                    c.post("/v1/completions", json=body)
        deadline = time.monotonic() + ABORT_DEADLINE
        while engine.stats.num_aborted_total == before:
            assert time.monotonic() < deadline, "the waiting request was not aborted"
            time.sleep(0.01)
        assert engine.stats.num_waiting == engine.stats.num_running == 0
    finally:
        stepper.resume().result(timeout=60)
        srv.stop()


def test_idle_server_does_not_spin(live):
    """With nothing to do, the engine thread blocks on its queue: it uses no CPU."""
    wait_idle(live.engine)
    time.sleep(0.1)
    clock = time.pthread_getcpuclockid(live.engine.thread.ident)
    before = time.clock_gettime(clock)
    time.sleep(0.5)
    assert time.clock_gettime(clock) - before < 0.005
