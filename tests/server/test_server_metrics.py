"""Per-request latency metrics: inter-token latency is per sample (vLLM: per sequence)."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
from server_helpers import MODEL, metric

from nanovllm.server import metrics as metrics_module
from nanovllm.server.metrics import ServerMetrics

STEP = 0.03  # seconds per engine step in the live test (4 x 0.0075 would be one shared gap)


class ZeroStats:
    """Stands in for EngineStats: every engine gauge and counter reads 0."""

    iteration_tokens = ()  # no step yet

    def __getattr__(self, name: str) -> int:
        return 0


def request_output(token_counts: list[int], finished: bool = False) -> SimpleNamespace:
    outs = [SimpleNamespace(index=i, token_ids=[0] * k, finish_reason="length" if finished else None)
            for i, k in enumerate(token_counts)]
    return SimpleNamespace(outputs=outs, finished=finished)


def test_itl_is_observed_per_sample_not_shared_over_n(monkeypatch):
    clock = iter([0.0, 1.0, 1.1, 1.3])  # tracker start, then one time per observe()
    monkeypatch.setattr(metrics_module.time, "perf_counter", lambda: next(clock))
    m = ServerMetrics(MODEL, stats=ZeroStats)
    tracker = m.tracker()
    tracker.observe(0, request_output([1, 1]))  # first tokens: TTFT only
    tracker.observe(0, request_output([2, 2]))  # one token each, 0.1 s later
    tracker.observe(0, request_output([4, 4], finished=True))  # two each, coalesced, 0.2 s

    def value(suffix: str) -> float:
        return m.registry.get_sample_value(f"vllm:inter_token_latency_seconds_{suffix}",
                                           {"model_name": MODEL})

    assert value("count") == 2 * 3  # each sample: 4 tokens, 3 gaps
    assert value("sum") == pytest.approx(2 * (0.1 + 0.1 + 0.1))  # every gap is 0.1 s
    assert m.registry.get_sample_value("vllm:time_to_first_token_seconds_count",
                                       {"model_name": MODEL}) == 1


def test_each_itl_of_an_n4_request_is_one_engine_step(http, live, monkeypatch):
    """Engine steps are slowed to STEP seconds so that a step gap dwarfs scheduling jitter."""
    step = live.engine.engine.step

    def slow_step():
        time.sleep(STEP)
        return step()

    monkeypatch.setattr(live.engine.engine, "step", slow_step)  # the engine thread calls this
    before = http.get("/metrics").text
    body = {"prompt": "four samples", "max_tokens": 8, "n": 4, "ignore_eos": True}
    assert http.post("/v1/completions", json=body).status_code == 200
    after = http.get("/metrics").text

    def delta(name: str, **labels) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert delta("vllm:inter_token_latency_seconds_count") == 4 * (8 - 1)
    # Every observation is about one step; a gap shared out over 4 samples would be STEP / 4.
    bucket = "vllm:inter_token_latency_seconds_bucket"
    assert delta(bucket, le="0.01") == 0
    assert delta(bucket, le="0.3") == 4 * (8 - 1)
