"""Issue 29, what vLLM's own API tests found: each item through the real server and the real
`openai` client, streams read chunk by chunk as a strict client reads them."""

from __future__ import annotations

import argparse
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from server_helpers import MODEL, error_of, serve
from test_server_chat import MESSAGES, RENDERED

from nanovllm.server.app import build_app
from nanovllm.server.cli import add_serve_args
from nanovllm.structured import ecmascript_classes


def strict_stream(stream) -> list:
    """Every chunk of an openai stream, read as a strict client does: choices[0] of each."""
    chunks = list(stream)
    for chunk in chunks:
        assert chunk.choices, f"a chunk with no choices: {chunk}"
        chunk.choices[0]  # noqa: B018 - what a strict client reads
    return chunks


@pytest.mark.parametrize("options", [{}, {"include_usage": False},
                                     {"include_usage": False, "continuous_usage_stats": True}])
def test_no_usage_chunk_unless_include_usage_is_true(client, chat_client, options):
    chunks = strict_stream(client.completions.create(
        model=MODEL, prompt="Hi", max_tokens=3, stream=True, stream_options=options))
    assert all(c.usage is None for c in chunks)
    chat = strict_stream(chat_client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_completion_tokens=3, stream=True,
        stream_options=options))
    assert all(c.usage is None for c in chat)


def test_usage_chunk_when_include_usage_is_true(client):
    *content, last = client.completions.create(model=MODEL, prompt="Hi", max_tokens=3,
                                               stream=True, stream_options={"include_usage": True})
    assert last.choices == [] and last.usage.completion_tokens == 3
    assert content and all(c.choices and c.usage is None for c in content)


def test_logit_bias_names_every_bad_key(http):
    err = error_of(http.post("/v1/completions", json={
        "prompt": "x", "logit_bias": {"1": 1, "abc": 2, "1.5": 3, "²": 4}}), 400)
    assert err["param"] == "logit_bias"
    assert all(f"`{k}`" in err["message"] for k in ("abc", "1.5", "²")), err["message"]
    err = error_of(http.post("/v1/completions", json={
        "prompt": "x", "logit_bias": {"5000": 1, "7": 1, "6000": 1, "-3": 1}}), 400)
    assert err["param"] == "logit_bias"
    assert all(k in err["message"] for k in ("5000", "6000", "-3")), err["message"]


def test_tokenize_token_strs_are_vocabulary_strings(http, engine):
    got = http.post("/tokenize", json={"prompt": "Paris is big", "return_token_strs": True}).json()
    tok = engine.tokenizer
    assert got["token_strs"] == [tok._tok.id_to_token(t) for t in got["tokens"]]
    # The vocabulary's strings ("Ġis"), not decoded text (" is").
    assert any(s.startswith("Ġ") for s in got["token_strs"]) and " " not in "".join(got["token_strs"])
    # ... which is what clients map back to ids.
    vocab = tok._tok.get_vocab()
    assert [vocab[s] for s in got["token_strs"]] == got["tokens"]


def test_tokenize_messages_renders_the_chat_template(chat_http):
    want = chat_http.post("/tokenize", json={"prompt": RENDERED}).json()["tokens"]
    got = chat_http.post("/tokenize", json={"messages": MESSAGES}).json()
    assert got["tokens"] == want and got["count"] == len(want)
    resp = chat_http.post("/v1/chat/completions", json={"messages": MESSAGES,
                                                        "max_completion_tokens": 1}).json()
    assert resp["usage"]["prompt_tokens"] == got["count"]
    bare = chat_http.post("/tokenize", json={"messages": MESSAGES,
                                             "add_generation_prompt": False}).json()
    assert bare["tokens"] != want and want[:len(bare["tokens"]) - 1] == bare["tokens"][:-1]


def test_tokenize_needs_exactly_one_form(chat_http, http):
    error_of(chat_http.post("/tokenize", json={"prompt": "x", "messages": MESSAGES}), 400)
    error_of(chat_http.post("/tokenize", json={}), 400)
    err = error_of(http.post("/tokenize", json={"messages": MESSAGES}), 400)  # no template
    assert err["param"] == "messages"


def test_invocations_routes_by_body(chat_http, chat_client):
    plain = chat_client.completions.create(model=MODEL, prompt="Hi", max_tokens=4, temperature=0)
    got = chat_http.post("/invocations", json={"prompt": "Hi", "max_tokens": 4,
                                               "temperature": 0}).json()
    assert got["object"] == "text_completion" and got["choices"][0]["text"] == plain.choices[0].text
    chat = chat_http.post("/invocations", json={"messages": MESSAGES, "max_tokens": 2}).json()
    assert chat["object"] == "chat.completion"
    with chat_http.stream("POST", "/invocations", json={"prompt": "Hi", "max_tokens": 2,
                                                         "stream": True}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.read().decode().endswith("data: [DONE]\n\n")
    err = error_of(chat_http.post("/invocations", json={"input": "Hi"}), 400)
    assert err["param"] == "prompt"
    err = error_of(chat_http.post("/invocations", json={"prompt": "Hi", "n": 0}), 400)
    assert err["param"] == "n"
    error_of(chat_http.post("/invocations", content=b"[1, 2]",
                           headers={"Content-Type": "application/json"}), 400)


@pytest.mark.parametrize("regex,field", [(r"\d{4}", "guided_regex"), (r"[\d]{4}", "regex"),
                                         (r"\w{4}", "guided_regex")])
def test_regex_shorthands_are_ascii_as_in_ecmascript(client, engine, regex, field):
    """A bias pulls hard toward the first byte of "۳" (a Unicode digit and word character): the
    constraint must still allow only ASCII, as JSON Schema's and vLLM's backends read `\\d`."""
    lead = engine.tokenizer.token_bytes.index("۳".encode()[:1])
    extra = {"guided_regex": regex} if field == "guided_regex" else {
        "structured_outputs": {"regex": regex}}
    choices = client.completions.create(
        model=MODEL, prompt="Number:", n=4, temperature=1.0, seed=1, max_tokens=12,
        logit_bias={str(lead): 30}, extra_body=extra).choices
    for choice in choices:
        assert re.fullmatch(regex, choice.text, re.ASCII), choice.text
        assert choice.finish_reason == "stop"


@pytest.mark.parametrize("regex,ascii_regex", [
    (r"\d+", "[0-9]+"), (r"[\d.]+", "[0-9.]+"), (r"\D\W", "[^0-9][^0-9A-Za-z_]"),
    (r"[^\d]", "[^0-9]"), (r"\\d", r"\\d"), (r"[a-z\]\d]", r"[a-z\]0-9]"), (r"[\D]", "[[^0-9]]"),
    (r"\p{L}\.", r"\p{L}\."), (r"[]\d]\d", "[]0-9][0-9]"), (r"[a^]\w", "[a^][0-9A-Za-z_]"),
])
def test_ecmascript_classes(regex, ascii_regex):
    assert ecmascript_classes(regex) == ascii_regex


def test_return_token_ids_on_completions(client, http):
    prompts = ["Hello there", "Two"]
    resp = client.completions.create(model=MODEL, prompt=prompts, max_tokens=5, n=2,
                                     temperature=1.0, seed=3, echo=True,
                                     extra_body={"return_token_ids": True})
    for choice in resp.choices:
        extra = choice.model_extra
        prompt = prompts[choice.index // 2]
        assert extra["prompt_token_ids"] == http.post("/tokenize", json={"prompt": prompt}
                                                      ).json()["tokens"]
        generated = choice.text[len(prompt):]  # echo: the prompt's text comes first
        detok = http.post("/detokenize", json={"tokens": extra["token_ids"]}).json()["prompt"]
        assert len(extra["token_ids"]) == 5 or choice.finish_reason == "stop"
        assert detok == generated
    assert sum(len(c.model_extra["token_ids"]) for c in resp.choices) == \
        resp.usage.completion_tokens
    plain = client.completions.create(model=MODEL, prompt="x", max_tokens=1)
    assert "token_ids" not in plain.choices[0].model_extra


def test_return_token_ids_streamed_on_completions(client):
    body = dict(model=MODEL, prompt=["Hello there", "Two"], max_tokens=6, n=2, temperature=1.0,
                seed=3, extra_body={"return_token_ids": True, "ignore_eos": True})
    whole = client.completions.create(**body)
    ids: dict[int, list[int]] = {}
    prompt_ids: dict[int, list[int]] = {}
    for chunk in strict_stream(client.completions.create(**body, stream=True)):
        choice = chunk.choices[0]
        extra = choice.model_extra
        if "prompt_token_ids" in extra:  # the first chunk of each choice, only
            assert choice.index not in prompt_ids and choice.index not in ids
            prompt_ids[choice.index] = extra["prompt_token_ids"]
        ids.setdefault(choice.index, []).extend(extra["token_ids"])
    for choice in whole.choices:
        assert ids[choice.index] == choice.model_extra["token_ids"]
        assert prompt_ids[choice.index] == choice.model_extra["prompt_token_ids"]


def test_return_token_ids_on_chat(chat_client, chat_http):
    want = chat_http.post("/tokenize", json={"messages": MESSAGES}).json()["tokens"]
    body = dict(model=MODEL, messages=MESSAGES, max_completion_tokens=6, n=2, temperature=1.0,
                seed=4, extra_body={"return_token_ids": True, "ignore_eos": True})
    resp = chat_client.chat.completions.create(**body)
    assert resp.model_extra["prompt_token_ids"] == want
    for choice in resp.choices:
        ids = choice.model_extra["token_ids"]
        assert len(ids) == 6
        assert chat_http.post("/detokenize", json={"tokens": ids}).json()["prompt"] == \
            choice.message.content
    streamed: dict[int, list[int]] = {0: [], 1: []}
    chunks = strict_stream(chat_client.chat.completions.create(**body, stream=True))
    assert chunks[0].model_extra["prompt_token_ids"] == want
    assert all("prompt_token_ids" not in c.model_extra for c in chunks[1:])
    for chunk in chunks:
        choice = chunk.choices[0]
        streamed[choice.index] += choice.model_extra.get("token_ids", [])
    assert [streamed[c.index] for c in resp.choices] == \
        [c.model_extra["token_ids"] for c in resp.choices]


@pytest.fixture(scope="module")
def live_token_ids(engine):
    srv = serve(build_app(engine, served_model_name=MODEL, ui=False,
                          return_tokens_as_token_ids=True), engine)
    yield srv
    srv.stop()


def test_server_flag_return_tokens_as_token_ids(live_token_ids):
    client = openai.OpenAI(base_url=f"{live_token_ids.url}/v1", api_key="unused", max_retries=0)
    lp = client.completions.create(model=MODEL, prompt="Hi", max_tokens=3, logprobs=2,
                                   temperature=0).choices[0].logprobs
    assert all(t.startswith("token_id:") for t in lp.tokens)
    assert all(k.startswith("token_id:") for top in lp.top_logprobs for k in top)
    chunks = strict_stream(client.completions.create(model=MODEL, prompt="Hi", max_tokens=3,
                                                     logprobs=1, stream=True))
    assert all(t.startswith("token_id:") for c in chunks for t in c.choices[0].logprobs.tokens)


def test_serve_has_the_flag():
    parser = argparse.ArgumentParser()
    add_serve_args(parser)
    assert parser.parse_args(["m", "--return-tokens-as-token-ids"]).return_tokens_as_token_ids
    assert not parser.parse_args(["m"]).return_tokens_as_token_ids


def test_allowed_token_ids(client, chat_client, http):
    allowed = [11, 300, 901]
    resp = client.completions.create(model=MODEL, prompt="Hi", n=3, max_tokens=8,
                                     temperature=1.5, seed=1,
                                     extra_body={"allowed_token_ids": allowed,
                                                 "return_token_ids": True, "ignore_eos": True})
    for choice in resp.choices:
        assert set(choice.model_extra["token_ids"]) <= set(allowed)
    chunks = strict_stream(chat_client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_completion_tokens=8, stream=True,
        extra_body={"allowed_token_ids": allowed, "return_token_ids": True}))
    streamed = [t for c in chunks for t in c.choices[0].model_extra.get("token_ids", [])]
    assert streamed and set(streamed) <= set(allowed)
    for bad, param in (([], "allowed_token_ids"), ([5000], "allowed_token_ids")):
        err = error_of(http.post("/v1/completions", json={"prompt": "x",
                                                          "allowed_token_ids": bad}), 400)
        assert err["param"] == param
    err = error_of(http.post("/v1/completions", json={
        "prompt": "x", "allowed_token_ids": [1], "guided_regex": "a+"}), 400)
    assert err["param"] == "allowed_token_ids"


def test_truncate_prompt_tokens_and_truncation_side(client, http):
    prompt = "one two three four five six seven eight nine ten"
    ids = http.post("/tokenize", json={"prompt": prompt}).json()["tokens"]
    for side, kept in (("left", ids[-4:]), ("right", ids[:4]), (None, ids[-4:])):
        extra = {"truncate_prompt_tokens": 4, **({"truncation_side": side} if side else {})}
        resp = client.completions.create(model=MODEL, prompt=prompt, max_tokens=2, echo=True,
                                         temperature=0, extra_body=extra)
        assert resp.usage.prompt_tokens == 4
        text = http.post("/detokenize", json={"tokens": kept}).json()["prompt"]
        assert resp.choices[0].text.startswith(text)  # echo shows what the model read
        same = client.completions.create(model=MODEL, prompt=kept, max_tokens=2, temperature=0)
        assert resp.choices[0].text == text + same.choices[0].text
    long = "word " * 2000  # longer than the context: a 400 unless truncated
    error_of(http.post("/v1/completions", json={"prompt": long, "max_tokens": 1}), 400)
    assert client.completions.create(model=MODEL, prompt=long, max_tokens=1, extra_body={
        "truncate_prompt_tokens": 16}).usage.prompt_tokens == 16
    for body, param in (({"truncate_prompt_tokens": 0}, "truncate_prompt_tokens"),
                        ({"truncate_prompt_tokens": 100_000}, "truncate_prompt_tokens"),
                        ({"truncation_side": "middle"}, "truncation_side")):
        err = error_of(http.post("/v1/completions", json={"prompt": "x", **body}), 400)
        assert err["param"] == param


def test_truncate_prompt_tokens_on_chat(chat_client, chat_http):
    want = chat_http.post("/tokenize", json={"messages": MESSAGES}).json()["tokens"]
    resp = chat_client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_completion_tokens=1,
        extra_body={"truncate_prompt_tokens": 5, "return_token_ids": True})
    assert resp.usage.prompt_tokens == 5 and resp.model_extra["prompt_token_ids"] == want[-5:]


OPEN_TURN = [*MESSAGES, {"role": "assistant", "content": "The colour is"}]


def test_chat_echo_prepends_the_assistants_own_last_message(chat_client):
    body = dict(model=MODEL, messages=OPEN_TURN, max_completion_tokens=4, temperature=0,
                extra_body={"echo": True, "add_generation_prompt": False,
                            "continue_final_message": True})
    plain = chat_client.chat.completions.create(**{**body, "extra_body": {
        "add_generation_prompt": False, "continue_final_message": True}})
    echoed = chat_client.chat.completions.create(**body)
    assert echoed.choices[0].message.content == "The colour is" + plain.choices[0].message.content
    assert echoed.usage == plain.usage
    chunks = strict_stream(chat_client.chat.completions.create(**body, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[1].choices[0].delta.content == "The colour is"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == \
        echoed.choices[0].message.content
    # The last message is the user's: nothing to echo (vLLM's rule).
    user_last = chat_client.chat.completions.create(model=MODEL, messages=MESSAGES,
                                                    max_completion_tokens=4, temperature=0,
                                                    extra_body={"echo": True})
    again = chat_client.chat.completions.create(model=MODEL, messages=MESSAGES,
                                                max_completion_tokens=4, temperature=0)
    assert user_last.choices[0].message.content == again.choices[0].message.content


def test_chat_prompt_logprobs(chat_client, chat_http):
    resp = chat_client.chat.completions.create(model=MODEL, messages=MESSAGES,
                                               max_completion_tokens=1, temperature=0,
                                               extra_body={"prompt_logprobs": 2})
    plain = chat_http.post("/v1/completions", json={"prompt": RENDERED, "max_tokens": 1,
                                                    "prompt_logprobs": 2}).json()
    assert resp.model_extra["prompt_logprobs"] == plain["choices"][0]["prompt_logprobs"]
    assert resp.model_extra["prompt_logprobs"][0] is None
    assert len(resp.model_extra["prompt_logprobs"]) == resp.usage.prompt_tokens
    err = error_of(chat_http.post("/v1/chat/completions", json={
        "messages": MESSAGES, "prompt_logprobs": 1, "stream": True}), 400)
    assert err["param"] == "prompt_logprobs"


def histogram(text: str, name: str) -> tuple[dict[str, float], float, float]:
    """A histogram's cumulative buckets {le: count}, count and sum (model_name=MODEL)."""
    buckets, count, total = {}, 0.0, 0.0
    for line in text.splitlines():
        if not line.startswith(name) or f'model_name="{MODEL}"' not in line:
            continue
        value = float(line.rsplit(" ", 1)[1])
        if line.startswith(f"{name}_bucket{{"):
            buckets[line.split('le="')[1].split('"')[0]] = value
        elif line.startswith(f"{name}_count{{"):
            count = value
        elif line.startswith(f"{name}_sum{{"):
            total = value
    return buckets, count, total


def test_vllm_request_and_iteration_metric_families(http, engine):
    before = http.get("/metrics").text
    body = {"prompt": ["one two three", "four"], "n": 3, "max_tokens": 7, "ignore_eos": True}
    assert http.post("/v1/completions", json=body).status_code == 200
    after = http.get("/metrics").text

    def delta(name: str) -> tuple[dict[str, float], float, float]:
        (b0, c0, s0), (b1, c1, s1) = histogram(before, name), histogram(after, name)
        return {k: v - b0.get(k, 0.0) for k, v in b1.items()}, c1 - c0, s1 - s0

    max_len = engine.max_model_len  # 256: vLLM's 1-2-5 buckets up to it
    buckets, count, total = delta("vllm:request_prompt_tokens")
    assert list(buckets) == ["1.0", "2.0", "5.0", "10.0", "20.0", "50.0", "100.0", "200.0",
                             "+Inf"] and max_len == 256
    ids = [len(http.post("/tokenize", json={"prompt": p}).json()["tokens"]) for p in body["prompt"]]
    assert count == 2 and total == sum(ids)
    assert delta("vllm:request_generation_tokens")[1:] == (2, 2 * 3 * 7)
    assert delta("vllm:request_params_n")[1:] == (2, 6)
    assert list(delta("vllm:request_params_n")[0]) == ["1.0", "2.0", "5.0", "10.0", "20.0", "+Inf"]
    assert delta("vllm:request_params_max_tokens")[1:] == (2, 14)
    for phase in ("queue", "prefill", "decode", "inference"):
        buckets, count, total = delta(f"vllm:request_{phase}_time_seconds")
        assert count == 2 and total >= 0, phase
        assert list(buckets)[:3] == ["0.3", "0.5", "0.8"] and len(buckets) == 22
    (_, _, decode), (_, _, prefill), (_, _, inference) = (
        delta(f"vllm:request_{p}_time_seconds") for p in ("decode", "prefill", "inference"))
    assert inference == pytest.approx(prefill + decode)
    buckets, count, total = delta("vllm:iteration_tokens_total")
    assert list(buckets) == ["1.0", "8.0", "16.0", "32.0", "64.0", "128.0", "256.0", "512.0",
                             "1024.0", "2048.0", "4096.0", "8192.0", "16384.0", "+Inf"]
    assert count >= 7 and total == sum(ids) + 2 * 3 * 7  # prompts + every token, as vLLM counts
    assert buckets["+Inf"] == count
    info = [line for line in after.splitlines() if line.startswith("vllm:cache_config_info{")]
    assert len(info) == 1 and info[0].endswith(" 1.0")
    assert 'block_size="16"' in info[0] and 'num_gpu_blocks="1024"' in info[0]
    assert 'enable_prefix_caching="True"' in info[0] and 'cache_dtype="auto"' in info[0]


@pytest.fixture(scope="module")
def live_load(engine):
    srv = serve(build_app(engine, served_model_name=MODEL, ui=False,
                          enable_server_load_tracking=True), engine)
    yield srv
    srv.stop()


def test_server_load_tracking(live_load, http, engine, monkeypatch):
    """Generation requests count from their start to their last byte: the engine is held
    still while two streams are open, so both are in flight when /load is read."""
    step, go = engine.engine.step, threading.Event()

    def held_step():
        go.wait(30)
        return step()

    def stream() -> str:
        body = {"model": MODEL, "prompt": "Hi", "max_tokens": 5, "stream": True}
        with httpx.Client(base_url=live_load.url, timeout=60) as c:
            return c.post("/v1/completions", json=body).text

    with httpx.Client(base_url=live_load.url, timeout=60) as c:
        assert c.get("/load").json() == {"server_load": 0}
        monkeypatch.setattr(engine.engine, "step", held_step)
        with ThreadPoolExecutor(2) as pool:
            streams = [pool.submit(stream) for _ in range(2)]
            deadline = time.monotonic() + 10
            while c.get("/load").json()["server_load"] < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert c.get("/load").json() == {"server_load": 2}
            c.post("/tokenize", json={"prompt": "x"})  # not a generation route: not counted
            assert c.get("/load").json() == {"server_load": 2}
            go.set()
            assert all(f.result().endswith("data: [DONE]\n\n") for f in streams)
        deadline = time.monotonic() + 10  # the count drops just after the last byte is sent
        while c.get("/load").json()["server_load"] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert c.get("/load").json() == {"server_load": 0}
    assert http.get("/load").json() == {"server_load": 0}  # off by default: always 0


def test_serve_has_the_load_tracking_flag():
    parser = argparse.ArgumentParser()
    add_serve_args(parser)
    assert parser.parse_args(["m", "--enable-server-load-tracking"]).enable_server_load_tracking
