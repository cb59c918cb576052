"""When the engine thread dies or shuts down, requests fail cleanly and /health says so.

Each test gets its own real engine and server. The crash is injected by making that engine
instance's step() raise (fault injection into a real engine, not a mock of it).
"""

from __future__ import annotations

import json
import threading

import httpx
import pytest
from server_helpers import MODEL, NUM_KV_BLOCKS, error_of, serve

from nanovllm import EngineConfig, LLMEngine
from nanovllm.async_engine import AsyncEngine
from nanovllm.inspection import Inspector
from nanovllm.server.app import build_app

LONG = {"model": MODEL, "prompt": "A long story", "max_tokens": 230, "n": 16, "ignore_eos": True}


@pytest.fixture
def doomed(tiny_ckpt):
    """A server whose engine steps only when told (step mode, through its inspector), paused:
    a request is in flight for as long as the test likes, however fast the machine."""
    loop = AsyncEngine(LLMEngine(EngineConfig(str(tiny_ckpt), num_kv_blocks=NUM_KV_BLOCKS)))
    loop.start()
    stepper = Inspector(loop, enable_step_mode=True)
    stepper.pause(lease=600).result(timeout=60)
    srv = serve(build_app(loop, served_model_name=MODEL), loop)
    srv.stepper = stepper
    yield srv
    srv.stop()
    loop.shutdown()


def first_event_then_rest(c: httpx.Client, stepper: Inspector, on_first) -> list[str]:
    """A stream's first event (one step taken), then `on_first()` while the request runs, and
    the rest of the stream."""
    with c.stream("POST", "/v1/completions", json={**LONG, "stream": True}) as r:
        stepper.step().result(timeout=60)
        lines = (line for line in r.iter_lines() if line.startswith("data: "))
        first = next(lines)
        on_first()
        return [first, *lines]


def test_engine_crash_fails_pending_requests_and_health(doomed):
    def boom():
        raise RuntimeError("simulated numpy failure")

    with httpx.Client(base_url=doomed.url, timeout=30) as c:
        pending: dict = {}
        waiter = threading.Thread(target=lambda: pending.update(r=c.post("/v1/completions", json=LONG)))

        def crash_on_the_next_step():
            waiter.start()
            doomed.engine.engine.step = boom
            doomed.stepper.resume()  # (the step it takes raises: the engine dies)

        events = first_event_then_rest(c, doomed.stepper, crash_on_the_next_step)
        waiter.join(30)
        error = json.loads(events[-2][len("data: "):])
        assert events[-1] == "data: [DONE]"
        # The cause is for the log, not for clients.
        assert error["error"] == {"message": "The engine is dead; the server log says why.",
                                  "type": "ServiceUnavailableError", "param": None, "code": 503}
        err = error_of(pending["r"], 503)
        assert err["type"] == "ServiceUnavailableError"
        assert "dead" in error_of(c.get("/health"), 503)["message"]
        assert "dead" in error_of(c.post("/v1/completions", json={"prompt": "x"}), 503)["message"]
        assert c.get("/metrics").status_code == 200
        assert c.post("/tokenize", json={"prompt": "still tokenizes"}).status_code == 200


def test_shutdown_aborts_in_flight_streams(doomed):
    with httpx.Client(base_url=doomed.url, timeout=30) as c:
        events = first_event_then_rest(c, doomed.stepper,
                                       lambda: doomed.engine.abort_all("The server is shutting down."))
        assert events[-1] == "data: [DONE]"
        error = json.loads(events[-2][len("data: "):])["error"]
        assert error["code"] == 503 and "shutting down" in error["message"]
        assert doomed.engine.stats.num_aborted_total == 1
        doomed.engine.shutdown()
        err = error_of(c.post("/v1/completions", json={"prompt": "x"}), 503)
        assert "shutting down" in err["message"]
        assert doomed.engine.stats.num_free_blocks == doomed.engine.stats.num_total_blocks
