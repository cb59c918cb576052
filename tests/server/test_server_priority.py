"""vLLM's `priority` request field through the real server: refused with a 400 naming it under
the default 'fcfs' policy (on completions, chat and Responses), and honoured under
`--scheduling-policy priority`: over an engine that steps only when told, with one slot, a
high-priority request that arrives after a low one runs before it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from server_helpers import MODEL, NUM_KV_BLOCKS, LiveServer, error_of, serve
from test_server_chat import MESSAGES

from nanovllm.async_engine import AsyncEngine
from nanovllm.config import EngineConfig
from nanovllm.engine import LLMEngine
from nanovllm.inspection import Inspector
from nanovllm.server.app import build_app
from nanovllm.server.chat.template import load_chat_template

GPT2_CHAT_TEMPLATE = Path(__file__).parents[2] / "examples" / "chat_template_gpt2.jinja"

DEADLINE = 60  # bounds a hang, not a speed


def bodies(priority) -> dict[str, dict]:
    return {"/v1/completions": {"model": MODEL, "prompt": "Hi", "max_tokens": 2,
                                "priority": priority},
            "/v1/chat/completions": {"model": MODEL, "messages": MESSAGES, "max_tokens": 2,
                                     "priority": priority},
            "/v1/responses": {"model": MODEL, "input": "Hi", "max_output_tokens": 2,
                              "priority": priority}}


@pytest.mark.parametrize("path", list(bodies(0)))
def test_fcfs_refuses_a_non_zero_priority_naming_it(chat_http, path):
    err = error_of(chat_http.post(path, json=bodies(3)[path]), 400)
    assert err["param"] == "priority" and "priority scheduling is not enabled" in err["message"]
    assert chat_http.post(path, json=bodies(0)[path]).status_code == 200


@pytest.mark.parametrize("value", [2**63, "high", 1.5, True])
def test_a_priority_that_is_not_a_64_bit_integer_is_a_400(chat_http, value):
    err = error_of(chat_http.post("/v1/completions", json=bodies(value)["/v1/completions"]), 400)
    assert err["param"] == "priority"


@pytest.fixture(scope="module")
def ranked_server(tiny_ckpt) -> Iterator[tuple[LiveServer, Inspector]]:
    engine = AsyncEngine(LLMEngine(EngineConfig(
        str(tiny_ckpt), num_kv_blocks=NUM_KV_BLOCKS, max_num_seqs=1,
        scheduling_policy="priority"))).start()
    stepper = Inspector(engine, enable_step_mode=True)
    template = load_chat_template(str(GPT2_CHAT_TEMPLATE))
    srv = serve(build_app(engine, served_model_name=MODEL, chat_template=template), engine)
    yield srv, stepper
    srv.stop()
    engine.shutdown()


@pytest.mark.parametrize("path", list(bodies(0)))
def test_priority_is_taken_when_the_policy_is_priority(ranked_server, path):
    srv, _ = ranked_server
    with httpx.Client(base_url=srv.url, timeout=DEADLINE) as c:
        for priority in (-5, 0, 7):
            assert c.post(path, json=bodies(priority)[path]).status_code == 200


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def test_a_high_priority_request_runs_before_an_earlier_low_one(ranked_server):
    """One slot, held by a running request; a low-priority request arrives, then a high one
    (through chat): when the slot frees, the high one is admitted. Requests are told apart in
    the engine's snapshot by their max_tokens."""
    srv, stepper = ranked_server
    engine = srv.engine
    stepper.pause(lease=4 * DEADLINE).result(timeout=DEADLINE)
    answers: dict[str, int] = {}

    def post(name: str, path: str, body: dict) -> None:
        with httpx.Client(base_url=srv.url, timeout=4 * DEADLINE) as c:
            answers[name] = c.post(path, json=body).status_code

    first = {"model": MODEL, "prompt": "Hi", "max_tokens": 3, "ignore_eos": True}
    low = {"model": MODEL, "prompt": "Hi", "max_tokens": 4, "ignore_eos": True, "priority": 1}
    high = {"model": MODEL, "messages": MESSAGES, "max_tokens": 5, "ignore_eos": True,
            "priority": -1}
    threads = [threading.Thread(target=post, args=args) for args in (
        ("first", "/v1/completions", first), ("low", "/v1/completions", low),
        ("high", "/v1/chat/completions", high))]
    try:
        threads[0].start()
        wait_for(lambda: engine.stats.num_waiting == 1, "the first request did not arrive")
        stepper.step().result(timeout=DEADLINE)
        running = stepper.snapshot().result(timeout=DEADLINE).running
        assert [s.max_tokens for s in running] == [3]
        for i, thread in enumerate(threads[1:], start=1):
            thread.start()
            wait_for(lambda i=i: engine.stats.num_waiting == i, "a request did not arrive")
        admitted = []
        for _ in range(50):
            if len(admitted) == 3:
                break
            stepper.step().result(timeout=DEADLINE)
            for seq in stepper.snapshot().result(timeout=DEADLINE).running:
                if seq.max_tokens not in admitted:
                    admitted.append(seq.max_tokens)
        assert admitted == [3, 5, 4]  # the first, then the high one, then the low one
    finally:
        stepper.resume().result(timeout=DEADLINE)
        for thread in threads:
            thread.join(DEADLINE)
    assert answers == {"first": 200, "low": 200, "high": 200}
