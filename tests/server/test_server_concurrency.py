"""Many concurrent clients, and clients that go away: every KV block must come back."""

from __future__ import annotations

import asyncio
import time

import httpx
from server_helpers import MODEL, metric, wait_idle

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
             "n": 16, "ignore_eos": True}  # ~1 s of work: far longer than the clients wait


def aborted(live) -> tuple[int, float]:
    text = httpx.get(f"{live.url}/metrics").text
    return live.engine.stats.num_aborted_total, metric(text, "vllm:request_success_total",
                                                       finished_reason="abort")


def test_client_disconnecting_mid_stream_aborts_its_request(live):
    wait_idle(live.engine)
    engine_before, metric_before = aborted(live)
    with httpx.Client(base_url=live.url, timeout=30) as c:
        for _ in range(3):
            with c.stream("POST", "/v1/completions", json={**LONG_BODY, "stream": True}) as r:
                lines = r.iter_lines()
                assert next(line for line in lines if line.startswith("data: {"))
                assert live.engine.stats.num_free_blocks < live.engine.stats.num_total_blocks
            # leaving the block closes the connection mid-stream
    stats = wait_idle(live.engine)
    engine_after, metric_after = aborted(live)
    assert engine_after - engine_before == 3
    assert metric_after - metric_before == 3 * LONG_BODY["n"]  # one per choice
    assert stats.num_free_blocks == stats.num_total_blocks


def test_client_disconnecting_while_waiting_for_a_full_response_aborts(live):
    wait_idle(live.engine)
    engine_before, _ = aborted(live)
    with httpx.Client(base_url=live.url, timeout=httpx.Timeout(30, read=0.2)) as c:
        try:
            c.post("/v1/completions", json=LONG_BODY)
            raise AssertionError("the request should have outlived the client's timeout")
        except httpx.ReadTimeout:
            pass
    wait_idle(live.engine)
    assert aborted(live)[0] - engine_before == 1  # counted only if it was still running


def test_idle_server_does_not_spin(live):
    """With nothing to do, the engine thread blocks on its queue: it uses no CPU."""
    wait_idle(live.engine)
    time.sleep(0.1)
    clock = time.pthread_getcpuclockid(live.engine.thread.ident)
    before = time.clock_gettime(clock)
    time.sleep(0.5)
    assert time.clock_gettime(clock) - before < 0.005
