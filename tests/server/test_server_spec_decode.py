"""Speculative decoding through a real server: the same completion as without it, and vLLM's
spec-decode counters on /metrics (only where speculation is configured, as vLLM)."""

from __future__ import annotations

import httpx
import pytest
from server_helpers import MODEL, make_engine, metric, serve, wait_idle

from nanovllm.server.app import build_app

K = 3


@pytest.fixture(scope="module")
def spec_live(tiny_ckpt):
    # A draft identical to the target: every greedy proposal is accepted.
    engine = make_engine(tiny_ckpt, speculative_config={"model": str(tiny_ckpt),
                                                         "num_speculative_tokens": K,
                                                         "adaptive": False})
    srv = serve(build_app(engine, served_model_name=MODEL), engine)
    yield srv
    srv.stop()
    engine.shutdown()


def completion(url: str) -> dict:
    body = {"model": MODEL, "prompt": "Speculation is", "max_tokens": 12, "temperature": 0}
    response = httpx.post(f"{url}/v1/completions", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]


def test_spec_decode_metrics_count_what_the_engine_accepted(spec_live, live):
    assert completion(spec_live.url) == completion(live.url)  # text, finish reason, logprobs
    wait_idle(spec_live.engine)
    text = httpx.get(f"{spec_live.url}/metrics").text
    drafts = metric(text, "vllm:spec_decode_num_drafts_total")
    proposed = metric(text, "vllm:spec_decode_num_draft_tokens_total")
    accepted = metric(text, "vllm:spec_decode_num_accepted_tokens_total")
    by_position = [metric(text, "vllm:spec_decode_num_accepted_tokens_per_pos_total",
                          position=str(j)) for j in range(K)]
    assert drafts > 0
    assert accepted == proposed > drafts  # the identical draft is always right
    assert sum(by_position) == accepted and by_position[0] == drafts
    # 12 tokens: the first from the prompt's pass, the other 11 in steps of up to 1 + K.
    assert 1 + accepted + drafts == 12


def test_no_spec_decode_series_without_speculation(live):
    completion(live.url)
    assert "vllm:spec_decode" not in httpx.get(f"{live.url}/metrics").text
