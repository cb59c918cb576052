"""Hostile traffic the engine must absorb, against a real `nanovllm serve`: a request with many
sequences does not starve a small one (row 4 of the hostile-traffic table), a full queue answers
429 with Retry-After, and a logit_bias on many ids is served (row 6).

Scheduling is asserted in engine steps, read from /metrics (`nanovllm:engine_steps_total`), never in
seconds. The server is small on purpose: 16 sequences per step and a queue of 64, so that one
streamed request of 4 prompts x n=16 fills both.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import httpx
import openai
import pytest
from server_helpers import MODEL, ServeProcess, error_of, metric

from nanovllm.values.limits import MAX_LOGIT_BIAS_ENTRIES

MAX_NUM_SEQS, MAX_WAITING_SEQS = 16, 64
BIG_TOKENS = 230  # per sequence; four waves of 16 sequences: 920 steps, first come first served
# 4 prompts x n=16: 16 sequences run, 48 wait.
BIG = {"model": MODEL, "prompt": ["Hi"] * 4, "n": 16, "max_tokens": BIG_TOKENS,
       "ignore_eos": True, "stream": True}


@pytest.fixture(scope="module")
def srv(tiny_ckpt) -> Iterator[ServeProcess]:
    proc = ServeProcess(str(tiny_ckpt), "--served-model-name", MODEL, "--num-kv-blocks", "1024",
                        "--max-num-seqs", str(MAX_NUM_SEQS),
                        "--max-waiting-seqs", str(MAX_WAITING_SEQS))
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.kill()


class BigRequest:
    """BIG streamed from a thread; `started` once the engine has sent its first chunk, `close()`
    disconnects (the server aborts it)."""

    def __init__(self, url: str) -> None:
        self.started, self.done, self.stop = threading.Event(), threading.Event(), threading.Event()
        self.chunks = 0
        self._thread = threading.Thread(target=self._run, args=(url,), daemon=True)
        self._thread.start()
        assert self.started.wait(120), "the big request never started"

    def _run(self, url: str) -> None:
        with httpx.Client(base_url=url, timeout=120) as c, \
                c.stream("POST", "/v1/completions", json=BIG) as r:
            for line in r.iter_lines():
                self.chunks += line.startswith("data: ")
                self.started.set()
                if self.stop.is_set():
                    return
            self.done.set()

    def close(self) -> None:
        self.stop.set()
        self._thread.join(120)


def engine_stat(srv: ServeProcess, name: str) -> float:
    return metric(httpx.get(f"{srv.url}/metrics").text, name)


@pytest.fixture
def big(srv) -> Iterator[BigRequest]:
    request = BigRequest(srv.url)
    try:
        yield request
    finally:
        request.close()
        assert_idle(srv)


def assert_idle(srv: ServeProcess) -> None:
    """Every request gone and every KV block free (the server gets a moment to abort)."""
    for _ in range(600):
        free, total = (engine_stat(srv, f"nanovllm:{n}") for n in ("num_free_kv_blocks", "num_kv_blocks"))
        if free == total and engine_stat(srv, "nanovllm:num_waiting_seqs") == 0:
            return
        threading.Event().wait(0.05)
    raise AssertionError(f"blocks still held: {free} of {total} free")


def all_queued(srv: ServeProcess) -> float:
    """The waiting count once all of BIG's sequences are in: its prompts are queued one after
    another, and the first may stream before the last is in."""
    for _ in range(600):
        waiting = engine_stat(srv, "nanovllm:num_waiting_seqs")
        if waiting >= len(BIG["prompt"]) * BIG["n"] - MAX_NUM_SEQS:
            return waiting
        threading.Event().wait(0.05)
    raise AssertionError(f"only {waiting} sequences waiting")


def test_a_small_request_is_served_while_a_big_one_runs(srv, big):
    """Row 4: first come first served, the small request would wait for the 48 sequences queued
    ahead of it, three waves of BIG_TOKENS steps; fairly, it is admitted in its first step and
    done in max_tokens steps (plus the steps the HTTP round trips take)."""
    assert engine_stat(srv, "nanovllm:num_waiting_seqs") > 0
    before = engine_stat(srv, "nanovllm:engine_steps_total")
    client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="none", max_retries=0)
    small = client.completions.create(model=MODEL, prompt="Hello", max_tokens=4, temperature=0,
                                      extra_body={"ignore_eos": True})
    steps = engine_stat(srv, "nanovllm:engine_steps_total") - before
    assert small.choices[0].finish_reason == "length" and small.usage.completion_tokens == 4
    assert not big.done.is_set()
    assert steps < BIG_TOKENS, f"the small request took {steps} engine steps"


def test_a_full_queue_answers_429_with_retry_after(srv, big):
    """48 sequences wait; a request whose 64 would pass the queue's 64 is refused at once, in
    OpenAI's shape, and nothing of it is queued; the big request goes on."""
    waiting = all_queued(srv)
    r = httpx.post(f"{srv.url}/v1/completions", json={"model": MODEL, "prompt": "Hi", "n": 64})
    err = error_of(r, 429)
    assert err["type"] == "RateLimitError" and err["param"] is None
    assert f"limit of {MAX_WAITING_SEQS}" in err["message"]
    assert r.headers["retry-after"] == "1"
    client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="none", max_retries=0)
    with pytest.raises(openai.RateLimitError):
        client.completions.create(model=MODEL, prompt="Hi", n=64)
    assert engine_stat(srv, "nanovllm:num_waiting_seqs") <= waiting
    assert not big.done.is_set()


def test_n_above_the_queue_is_a_400_on_n(srv):
    r = httpx.post(f"{srv.url}/v1/completions",
                   json={"model": MODEL, "prompt": "Hi", "n": MAX_WAITING_SEQS + 1})
    err = error_of(r, 400)
    assert err["param"] == "n" and f"at most {MAX_WAITING_SEQS}" in err["message"]


def test_a_logit_bias_on_many_ids_is_served(srv):
    """Row 6 (the per-step cost is the script's to show): the most entries allowed, n=16, and
    every sample follows the bias exactly."""
    bias = {str(i): -100 for i in range(MAX_LOGIT_BIAS_ENTRIES)}
    bias["7"] = 100
    client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="none", max_retries=0)
    out = client.completions.create(model=MODEL, prompt="Hello", max_tokens=6, n=16,
                                    temperature=1.0, logit_bias=bias, logprobs=0)
    assert len(out.choices) == 16
    for choice in out.choices:
        assert len(choice.logprobs.tokens) == 6
    assert_idle(srv)
    tokens = {t for c in out.choices for t in c.logprobs.tokens}
    tokenizer_piece = httpx.post(f"{srv.url}/detokenize", json={"tokens": [7]}).json()["prompt"]
    assert tokens == {tokenizer_piece}



BEAM_TOKENS = 200  # per beam: with EOS out of play, each search lasts exactly this many steps
# The widest beams the limits allow, on 4 prompts: 4 searches of 16 beams, each filling the
# batch; first come first served, they would run in 4 waves of BEAM_TOKENS steps.
BEAMS = {"model": MODEL, "prompt": ["Hi"] * 4, "n": 16, "max_tokens": BEAM_TOKENS,
         "use_beam_search": True, "ignore_eos": True}


def test_a_small_request_is_served_while_wide_beam_searches_run(srv):
    """The beam attack does not starve a small request: it is done in fewer steps than one
    search takes, and every beam search still finishes whole."""
    answers: list[httpx.Response] = []
    start = engine_stat(srv, "nanovllm:engine_steps_total")
    attacker = threading.Thread(target=lambda: answers.append(
        httpx.post(f"{srv.url}/v1/completions", json=BEAMS, timeout=600)), daemon=True)
    attacker.start()
    for _ in range(1200):  # until the first search has forked its beams and the others wait
        if engine_stat(srv, "nanovllm:engine_steps_total") > start + 2:
            break
        threading.Event().wait(0.05)
    assert engine_stat(srv, "vllm:num_requests_running") == 1
    assert engine_stat(srv, "nanovllm:num_waiting_seqs") >= 1  # searches wait for the first
    before = engine_stat(srv, "nanovllm:engine_steps_total")
    client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="none", max_retries=0)
    small = client.completions.create(model=MODEL, prompt="Hello", max_tokens=4, temperature=0,
                                      extra_body={"ignore_eos": True})
    steps = engine_stat(srv, "nanovllm:engine_steps_total") - before
    assert small.usage.completion_tokens == 4
    assert steps < BEAM_TOKENS, f"the small request took {steps} engine steps"
    assert not answers, "the beam searches ended before the small request was measured"
    attacker.join(600)
    (r,) = answers
    assert r.status_code == 200, r.text
    assert [c["index"] for c in r.json()["choices"]] == list(range(4 * 16))
    assert_idle(srv)
