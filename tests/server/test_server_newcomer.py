"""What a newcomer meets first, said truthfully: errors that name only fields the client sent
(chat's prompt is `messages`), where a refused field is served instead, which model a 404's
server serves, whether the weights are random, and one access-log line per request."""

from __future__ import annotations

import logging
import re

import httpx
import pytest
from server_helpers import API_KEY, MODEL, error_of, serve

from nanovllm.server.app import build_app

HELLO = [{"role": "user", "content": "Hello there"}]


def chat_error(chat_http, status=400, **body) -> dict:
    return error_of(chat_http.post("/v1/chat/completions", json={"messages": HELLO, **body}),
                    status)


def test_a_too_long_chat_names_messages_never_prompt(chat_http):
    long = [{"role": "user", "content": "one two three " * 200}]
    err = chat_error(chat_http, messages=long)
    assert err["param"] == "messages"
    assert re.search(r"your `messages` \(as the chat template renders them\) have \d+ tokens, "
                     "which leaves no room for a completion", err["message"])
    huge = [{"role": "user", "content": "x" * 200_000}]  # refused before tokenizing
    err = chat_error(chat_http, messages=huge)
    assert err["param"] == "messages" and "characters" in err["message"]
    assert "prompt" not in err["message"]


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_a_chat_completion_too_long_for_the_context_names_the_field_sent(chat_http, field):
    err = chat_error(chat_http, **{field: 255})
    assert err["param"] == field
    assert re.search(r"you requested \d+ tokens \(\d+ in the messages, 255 in the completion\)",
                     err["message"])
    assert f"Please reduce the length of the messages or `{field}` (at most" in err["message"]


def test_beam_search_on_chat_says_where_it_is_served(chat_http):
    err = chat_error(chat_http, use_beam_search=True)
    assert err["param"] == "use_beam_search"
    assert err["message"] == ("`use_beam_search` is not supported on this endpoint; this server "
                              "serves it on /v1/completions.")


def test_a_wrong_models_404_names_the_served_model(chat_http, http):
    for got in (chat_error(chat_http, 404, model="gpt-4"),
                error_of(http.post("/tokenize", json={"prompt": "x", "model": "gpt-4"}), 404)):
        assert got["param"] == "model" and f"this server serves `{MODEL}`" in got["message"]


def test_models_say_the_weights_are_random(http):
    [card] = http.get("/v1/models").json()["data"]
    assert card["id"] == MODEL and card["random_weights"] is True


def test_the_access_log_has_one_line_per_request(engine, caplog):
    """Method, path, status, duration and the request id the client got, for every answer
    (a 4xx included); build_app(log_requests=False) (--disable-log-requests) logs none."""
    caplog.set_level(logging.INFO, logger="nanovllm.access")
    srv = serve(build_app(engine, served_model_name=MODEL, api_key=API_KEY), engine)
    try:
        with httpx.Client(base_url=srv.url, timeout=60,
                          headers={"Authorization": f"Bearer {API_KEY}"}) as c:
            ok = c.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 2},
                        headers={"X-Request-Id": "client-id-1"})
            refused = c.post("/v1/completions", json={"prompt": "Hi", "model": "nope"})
            unauthorized = c.get("/v1/models", headers={"Authorization": "Bearer wrong"})
    finally:
        srv.stop()
    assert (ok.status_code, refused.status_code, unauthorized.status_code) == (200, 404, 401)
    lines = [r.getMessage() for r in caplog.records if r.name == "nanovllm.access"]
    assert len(lines) == 3, lines
    line = r'127\.0\.0\.1:\d+ "{} {}" {} \d+\.\d ms request_id={}'
    assert re.fullmatch(line.format("POST", "/v1/completions", 200, "client-id-1"), lines[0])
    assert re.fullmatch(line.format("POST", "/v1/completions", 404,
                                    refused.headers["x-request-id"]), lines[1])
    assert re.fullmatch(line.format("GET", "/v1/models", 401, r"[0-9a-f]{32}"), lines[2])

    caplog.clear()
    quiet = serve(build_app(engine, served_model_name=MODEL, log_requests=False), engine)
    try:
        assert httpx.get(f"{quiet.url}/v1/models").status_code == 200
    finally:
        quiet.stop()
    assert [r for r in caplog.records if r.name == "nanovllm.access"] == []


def test_a_path_in_the_access_log_cannot_forge_a_line(http, caplog):
    caplog.set_level(logging.INFO, logger="nanovllm.access")
    assert http.get("/v1/models%0AINFO%20forged").status_code == 404
    [line] = [r.getMessage() for r in caplog.records if r.name == "nanovllm.access"]
    assert "\n" not in line and "/v1/models\\nINFO forged" in line


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_api_docs_need_nothing_from_another_host(http, page):
    """/docs and /redoc load their scripts, styles and icon from this server (fastapi-offline's
    copies), so they work offline; every one of them loads."""
    html = http.get(page)
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
    assert not re.search(r"""(src|href|url)\s*[=:(]\s*['"]?(https?:)?//""", html.text), html.text
    assets = re.findall(r"""(?:src|href)\s*=\s*['"]([^'"]+)['"]""", html.text)
    assert len(assets) >= 2, html.text  # a script and a style or icon at least
    for asset in assets:
        assert asset.startswith("/docs/static/"), asset
        got = http.get(asset)
        assert got.status_code == 200 and len(got.content) > 1000, asset
    assert http.get("/openapi.json").json()["info"]["title"]
