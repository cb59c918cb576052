"""Hostile traffic against a real `nanovllm serve` process: each attack is refused up front with a
4xx in OpenAI's shape naming the field (never a 5xx), and the server is idle and whole afterwards.

One server process serves the module, with its default limits except a small concurrency limit.
Timing is never asserted: what is asserted is the answer, and that work is refused before it is
done (by the message that only the early check gives).
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from server_helpers import ServeProcess, error_of, serve

from nanovllm.values.limits import (
    MAX_LOGIT_BIAS_ENTRIES,
    MAX_STOP_STRING_CHARS,
    MAX_STOP_STRINGS,
    MAX_STOP_TOKEN_IDS,
    ServerLimits,
)

LIMITS = ServerLimits()
CONCURRENCY = 12
MILLION = "a" * 1_000_000


@pytest.fixture(scope="module")
def srv(tiny_ckpt) -> Iterator[ServeProcess]:
    proc = ServeProcess(str(tiny_ckpt), "--num-kv-blocks", "256",
                        "--limit-concurrency", str(CONCURRENCY))
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.kill()


@pytest.fixture
def http(srv) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=srv.url, timeout=60) as c:
        yield c


def complete(http: httpx.Client, **body) -> httpx.Response:
    return http.post("/v1/completions", json={"prompt": "Hello", "max_tokens": 2, **body})


def refused(response: httpx.Response, param: str | None, *words: str, status: int = 400) -> dict:
    err = error_of(response, status)
    assert err["param"] == param, err
    for word in words:
        assert word in err["message"], err
    return err


# ---- row 1: a prompt too long to fit is refused before it is tokenized -----------------------
@pytest.mark.parametrize("route,body", [
    ("/v1/completions", {"prompt": MILLION}),
    ("/v1/completions", {"prompt": ["Hello", MILLION]}),
    ("/tokenize", {"prompt": MILLION}),
], ids=["completion", "prompt-list", "tokenize"])
def test_a_million_characters_are_refused_before_tokenizing(http, route, body):
    err = refused(http.post(route, json=body), "prompt", "maximum context length is 256 tokens")
    assert "1000000 characters" in err["message"]  # the character bound, not a token count


# ---- rows 3, 4, 6: sizes one request may ask for ---------------------------------------------
@pytest.mark.parametrize("body,param,words", [
    ({"stop": ["x" * 1000] * 1000, "n": 4}, "stop", [f"at most {MAX_STOP_STRINGS}"]),
    ({"stop": ["s"] * (MAX_STOP_STRINGS + 1)}, "stop", [f"at most {MAX_STOP_STRINGS}"]),
    ({"stop": "x" * (MAX_STOP_STRING_CHARS + 1)}, "stop", [f"at most {MAX_STOP_STRING_CHARS}"]),
    ({"prompt": ["Hi"] * 32, "n": 128}, "n", ["4096 sequences", "at most 256"]),
    ({"prompt": ["Hi"] * (LIMITS.max_prompts_per_request + 1)}, "prompt", ["at most 64"]),
    ({"logit_bias": {str(i): 1 for i in range(1024)}, "n": 16}, "logit_bias",
     [f"at most {MAX_LOGIT_BIAS_ENTRIES}"]),
    ({"stop_token_ids": [1] * (MAX_STOP_TOKEN_IDS + 1)}, "stop_token_ids",
     [f"at most {MAX_STOP_TOKEN_IDS}"]),
    ({"prompt": [7] * 200, "echo": True, "logprobs": 20, "n": 128}, "logprobs",
     ["at most 200000 per response"]),
], ids=["1000-stops", "17-stops", "long-stop", "32x128", "65-prompts", "logit-bias-all",
        "stop-token-ids", "echo-logprobs"])
def test_request_size_limits(http, body, param, words):
    refused(complete(http, **body), param, *words)


def test_detokenize_takes_at_most_a_context_of_tokens(http):
    refused(http.post("/detokenize", json={"tokens": [1] * 257}), "tokens", "context length of 256")
    assert http.post("/detokenize", json={"tokens": [1] * 256}).status_code == 200


def test_the_limits_still_admit_requests_at_the_limit(http):
    ok = complete(http, prompt=["Hi"] * 4, n=64, stop=["s" * MAX_STOP_STRING_CHARS] * MAX_STOP_STRINGS,
                  logit_bias={str(i): 1 for i in range(MAX_LOGIT_BIAS_ENTRIES)}, max_tokens=1)
    assert ok.status_code == 200, ok.text
    assert len(ok.json()["choices"]) == 256


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_an_oversized_body_is_413(http, chunked):
    body = json.dumps({"prompt": "a" * LIMITS.max_request_body_bytes}).encode()
    if chunked:  # no Content-Length: the limit is enforced while the body streams in
        content = (body[i:i + 65536] for i in range(0, len(body), 65536))
        response = http.post("/v1/completions", content=content,
                             headers={"Content-Type": "application/json"})
        assert "content-length" not in response.request.headers
    else:
        response = http.post("/v1/completions", content=body,
                             headers={"Content-Type": "application/json"})
    refused(response, None, f"limit of {LIMITS.max_request_body_bytes} bytes", status=413)


# ---- row 7: lone surrogates anywhere are a 400 naming the field ------------------------------
@pytest.mark.parametrize("route,body,param", [
    ("/v1/completions", {"prompt": "\ud800"}, "prompt"),
    ("/v1/completions", {"prompt": ["ok", "a\udfffb"]}, "prompt"),
    ("/v1/completions", {"prompt": "Hi", "model": "\ud800"}, "model"),
    ("/v1/completions", {"prompt": "Hi", "stop": ["\ud800"]}, "stop"),  # pydantic's own words
    ("/v1/completions", {"prompt": "Hi", "user": "\ud800"}, "user"),
    ("/v1/completions", {"prompt": "Hi", "unknown_field": {"k": ["\ud800"]}}, "unknown_field"),
    ("/v1/completions", {"prompt": "Hi", "logit_bias": {"\ud800": 1}}, "logit_bias"),
    ("/tokenize", {"prompt": "\ud800"}, "prompt"),
    ("/detokenize", {"tokens": [1], "model": "\udc00"}, "model"),
], ids=["prompt", "prompt-list", "model", "stop", "user", "unknown", "bias-key", "tokenize",
        "detokenize-model"])
def test_lone_surrogates_are_400_naming_the_field(http, route, body, param):
    raw = json.dumps(body)  # ensure_ascii: the surrogate travels as the escape \ud800
    response = http.post(route, content=raw, headers={"Content-Type": "application/json"})
    # A length-constrained string (stop) is refused by pydantic itself, in its words.
    words = "unable to parse raw data as a unicode string" if param == "stop" else "lone UTF-16"
    refused(response, param, words)


def test_error_messages_quote_user_values_safely(http):
    err = refused(complete(http, logit_bias={"x" * 10_000 + "\x00": 1}), "logit_bias")
    assert len(err["message"]) < 200 and "\x00" not in err["message"]


# ---- rows 8 and 9: connections, names and the file system ------------------------------------
def test_open_file_limit_is_raised_and_concurrency_is_limited(srv, http):
    limits = open(f"/proc/{srv.proc.pid}/limits").read()
    soft, hard = next(line.split()[3:5] for line in limits.splitlines()
                      if line.startswith("Max open files"))
    assert soft == hard
    idle = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(CONCURRENCY)]
    try:
        deadline = time.monotonic() + 30  # until the server has accepted them all
        while (status := httpx.get(f"{srv.url}/health").status_code) != 503:
            assert time.monotonic() < deadline, status
            time.sleep(0.05)
    finally:
        for s in idle:
            s.close()
    deadline = time.monotonic() + 30
    while httpx.get(f"{srv.url}/health").status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_no_local_path_is_public(srv, http, tiny_ckpt):
    card = http.get("/v1/models").json()["data"][0]
    assert card["id"] == card["root"] == tiny_ckpt.name
    assert str(tiny_ckpt.parent) not in http.get("/metrics").text
    assert str(tiny_ckpt.parent) not in complete(http, model="nope").text


def test_the_server_is_whole_afterwards(srv, http):
    """Last in the module: no 5xx was logged, a normal request works, every KV block is free."""
    assert complete(http).status_code == 200
    deadline = time.monotonic() + 30
    while True:
        metrics = http.get("/metrics").text
        free, total = (_gauge(metrics, name) for name in
                       ("nanovllm:num_free_kv_blocks", "nanovllm:num_kv_blocks"))
        if free == total:
            break
        assert time.monotonic() < deadline, (free, total)
        time.sleep(0.05)
    assert "Traceback" not in srv.log and "internal error" not in srv.log


def _gauge(text: str, name: str) -> float:
    return float(next(line.rsplit(" ", 1)[1] for line in text.splitlines()
                      if line.startswith(name + "{")))


# ---- in-process: what cannot be provoked from outside ----------------------------------------
def test_a_500_carries_only_a_request_id_and_is_logged_once(engine, caplog):
    from nanovllm.server.app import build_app

    app = build_app(engine, served_model_name="m")

    @app.get("/boom")
    async def boom():
        raise RuntimeError("secret detail")

    live = serve(app, engine)
    try:
        with caplog.at_level(logging.ERROR):
            response = httpx.get(f"{live.url}/boom")
    finally:
        live.stop()
    err = error_of(response, 500)
    assert "secret" not in err["message"] and "RuntimeError" not in err["message"]
    request_id = err["message"].removeprefix("Internal error, request id ").rstrip(".")
    logged = [r for r in caplog.records if r.exc_info]
    assert len(logged) == 1 and request_id in logged[0].getMessage()


def test_tokenizing_a_long_text_lets_other_threads_run(tiny_ckpt):
    """encode goes through the batch API, which releases the GIL: a counter on another thread
    keeps counting while a long text tokenizes (with the GIL held it would not move at all)."""
    from nanovllm.tokenizer import Tokenizer

    tok = Tokenizer(tiny_ckpt, eos_token_id=0)
    text = "The quick brown fox jumps over the lazy dog. " * 40_000
    started, done = threading.Event(), threading.Event()
    ticks_during = 0

    def encode():
        started.set()
        tok.encode(text)
        done.set()

    worker = threading.Thread(target=encode)
    worker.start()
    started.wait()
    while not done.is_set():
        ticks_during += 1
    worker.join()
    assert ticks_during > 1000


def test_limit_flags_come_from_server_limits(tmp_path):
    from nanovllm.cli import build_parser
    from nanovllm.server.cli import limits_from_args, served_name

    args = build_parser().parse_args(["serve", "gpt2", "--max-prompts-per-request", "3",
                                      "--max-request-body-bytes", "1000"])
    assert limits_from_args(args) == ServerLimits(max_prompts_per_request=3,
                                                  max_request_body_bytes=1000)
    with pytest.raises(ValueError, match="--limit-concurrency"):
        limits_from_args(build_parser().parse_args(["serve", "gpt2", "--limit-concurrency", "0"]))
    assert served_name("gpt2") == "gpt2"
    assert served_name(f"{tmp_path}/") == tmp_path.name
