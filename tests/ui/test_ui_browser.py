"""The playground in a real browser (Debian's chromium through playwright) against a real
`nanovllm serve` on the tiny checkpoint. Screenshots go to a temporary directory."""

from __future__ import annotations

import json
import re
import time

import httpx
import pytest
from ui_helpers import API_KEY, metric

sync_api = pytest.importorskip("playwright.sync_api",
                               reason="playwright is missing: `make setup-dev` installs it")
expect = sync_api.expect

PROMPT = "The engine schedules every request"

# Records the number of token spans after every change of the output, from inside the page:
# the only way to see each intermediate state of a stream that lasts a fraction of a second.
RECORD_TOKEN_COUNTS = """() => {
  window.tokenCounts = [];
  new MutationObserver(() => {
    window.tokenCounts.push(document.querySelectorAll('#choices .token').length);
  }).observe(document.querySelector('#choices'), {childList: true, subtree: true});
}"""

# Clicks Stop as soon as the first token is drawn, while the rest is still on its way.
STOP_AT_FIRST_TOKEN = """() => {
  new MutationObserver((_, observer) => {
    if (document.querySelector('#choices .token')) {
      observer.disconnect();
      document.querySelector('#stop').click();
    }
  }).observe(document.querySelector('#choices'), {childList: true, subtree: true});
}"""


def open_playground(page, url: str) -> None:
    page.goto(f"{url}/ui")
    expect(page.locator("#playground")).to_be_visible()


def set_controls(page, **values) -> None:
    for name, value in values.items():
        page.fill(f"#gen-form [name={name}]", str(value))


def generate(page, status: str = "done") -> None:
    page.click("#generate")
    expect(page.locator("#status")).to_have_text(status, timeout=60_000)


def drawn_tokens(page, choice: int = 0) -> list[str]:
    spans = page.locator(f"#choices .choice[data-index='{choice}'] .token")
    return [t.replace("↵\n", "\n") for t in spans.all_text_contents()]


def api_logprobs(url: str, **body) -> dict:
    """The logprobs of the same request through the API, not streamed."""
    response = httpx.post(f"{url}/v1/completions", json=body, timeout=60)
    response.raise_for_status()
    return response.json()["choices"][0]["logprobs"]


def test_page_loads_and_says_the_weights_are_random(page, open_server, tiny_ckpt, shots):
    open_playground(page, open_server.url)
    expect(page.locator("#dummy-notice")).to_be_visible()
    expect(page.locator("#dummy-notice")).to_contain_text("Random weights")
    expect(page.locator("#dummy-notice")).to_contain_text("the same GPT2LMHeadModel")
    expect(page.locator("#model")).to_contain_text(tiny_ckpt.name)
    expect(page.locator("[role=tab]")).to_have_text(["Playground", "Engine", "Attention", "Forward pass"])
    expect(page.locator("#key-form")).to_be_hidden()
    page.screenshot(path=shots / "loaded.png")


def test_a_streamed_completion_appears_token_by_token(page, open_server, shots):
    open_playground(page, open_server.url)
    page.fill("#prompt", PROMPT)
    set_controls(page, max_tokens=120, seed=7, logprobs=5)
    page.evaluate(RECORD_TOKEN_COUNTS)
    generate(page)

    tokens = drawn_tokens(page)
    counts = page.evaluate("window.tokenCounts")
    intermediate = {c for c in counts if 0 < c < len(tokens)}
    assert len(intermediate) >= 2, f"no token-by-token drawing: counts {counts}"
    assert counts == sorted(counts)  # tokens are only ever added
    # The same tokens as the API gives for the same seeded request.
    assert tokens == api_logprobs(open_server.url, prompt=PROMPT, max_tokens=120, seed=7,
                                  logprobs=5)["tokens"]
    usage = page.locator("[data-stat=usage]").inner_text()
    assert re.fullmatch(rf"\d+ \+ {len(tokens)} = \d+", usage), usage
    assert re.fullmatch(r"\d+ ms", page.locator("[data-stat=ttft]").inner_text())
    expect(page.locator(".choice .finish")).to_contain_text("finished:")
    page.screenshot(path=shots / "streamed.png")


def expected_rows(logprobs: dict, i: int) -> list[tuple[str, float]]:
    """Token i's alternatives as the tooltip lists them: the API's top_logprobs, most likely
    first, plus the chosen token with its own logprob if another token of the same text
    (e.g. two halves of UTF-8 characters, both "\ufffd") took its entry."""
    token, logprob, top = (logprobs[k][i] for k in ("tokens", "token_logprobs", "top_logprobs"))
    rows = list(top.items()) + ([(token, logprob)] if top.get(token) != logprob else [])
    return sorted(rows, key=lambda kv: -kv[1])


def test_hovering_a_token_shows_its_alternatives(page, open_server, shots):
    request = dict(prompt=PROMPT, max_tokens=24, seed=3, logprobs=5)
    logprobs = api_logprobs(open_server.url, **request)
    collided = [top.get(t) != lp for t, lp, top in
                zip(logprobs["tokens"], logprobs["token_logprobs"], logprobs["top_logprobs"])]
    # One token whose entry is its own, one whose entry another token of the same text took.
    hovered = [collided.index(False), collided.index(True)]

    open_playground(page, open_server.url)
    page.fill("#prompt", PROMPT)
    set_controls(page, **{k: v for k, v in request.items() if k != "prompt"})
    generate(page)
    tooltip = page.locator("#tooltip")
    expect(tooltip).to_be_hidden()
    for i in hovered:
        token = json.dumps(logprobs["tokens"][i], ensure_ascii=False)
        rows = expected_rows(logprobs, i)
        page.locator("#choices .token").nth(i).hover()
        expect(tooltip).to_be_visible()
        expect(tooltip).to_contain_text(f"{token}: p = ")
        expect(tooltip.locator("tr td:first-child")).to_have_text(
            [json.dumps(t, ensure_ascii=False) for t, _ in rows])
        shown = [float(x) for x in tooltip.locator("tr td:last-child").all_text_contents()]
        assert shown == pytest.approx([lp for _, lp in rows], abs=1e-3)
        expect(tooltip.locator("tr.chosen td:first-child")).to_have_text(token)
        page.screenshot(path=shots / f"hover-{i}.png")
        page.mouse.move(0, 0)
        expect(tooltip).to_be_hidden()


def test_n_choices_are_drawn_side_by_side(page, open_server):
    open_playground(page, open_server.url)
    set_controls(page, n=3, max_tokens=8, seed=11)
    generate(page)
    choices = page.locator("#choices .choice")
    expect(choices).to_have_count(3)
    for i in range(3):
        assert len(drawn_tokens(page, i)) >= 1
    expect(page.locator(".choice .finish")).to_have_text(["· finished: length"] * 3)


def test_without_logprobs_the_text_streams_plain(page, open_server):
    open_playground(page, open_server.url)
    page.fill("#prompt", PROMPT)
    set_controls(page, logprobs="", max_tokens=10, seed=2)
    generate(page)
    text = page.locator("#choices .choice .text")
    expect(text.locator(".token")).to_have_count(0)
    expected = httpx.post(f"{open_server.url}/v1/completions", timeout=60, json=dict(
        prompt=PROMPT, max_tokens=10, seed=2)).json()
    expect(text).to_have_text(PROMPT + expected["choices"][0]["text"])
    expect(page.locator("[data-stat=tokens]")).to_have_text(
        str(expected["usage"]["completion_tokens"]))


def test_the_server_refuses_a_bad_control_and_the_page_says_why(page, open_server):
    open_playground(page, open_server.url)
    set_controls(page, top_p=5)
    page.click("#generate")
    expect(page.locator("#status")).to_contain_text("top_p")
    expect(page.locator("#status")).to_have_class(re.compile(r"\berror\b"))
    expect(page.locator("#generate")).to_be_enabled()


PAUSE_LEASE = 120  # seconds the test's pause holds if it is not resumed (a failed test)
# Paused, only the abort can take the request out of the engine, and its path is event-driven
# (socket closed, the server's disconnect listener, the engine's inbox wakes the paused thread):
# this bounds a hang, not a speed, and ends well inside the lease.
ABORT_DEADLINE = 60


def step_until_a_token(url: str) -> None:
    """Step the paused engine until it has generated a token (once the request reached it)."""
    step, before = f"{url}/ui/api/step/step", metric(url, "vllm:generation_tokens_total")
    deadline = time.monotonic() + ABORT_DEADLINE
    while metric(url, "vllm:generation_tokens_total") == before:
        assert time.monotonic() < deadline, "the request never produced a token"
        httpx.post(step, json={"lease": PAUSE_LEASE}, timeout=60).raise_for_status()


def test_stop_aborts_the_stream_and_the_engine_request(page, steppable_server):
    """Stop at the first token, the engine paused: unpaused, the tiny model's 200 tokens take
    less time than a loaded machine's browser takes to draw a token and click, and a request
    that finished first cannot be aborted (a test that did not pause it failed in CI)."""
    url = steppable_server.url
    aborted_before = metric(url, "nanovllm:num_aborted_requests_total")
    open_playground(page, url)
    set_controls(page, max_tokens=200, seed=1)
    page.evaluate(STOP_AT_FIRST_TOKEN)
    httpx.post(f"{url}/ui/api/step/pause", json={"lease": PAUSE_LEASE}).raise_for_status()
    try:
        page.click("#generate")
        step_until_a_token(url)
        expect(page.locator("#status")).to_have_text("stopped", timeout=60_000)
        assert len(drawn_tokens(page)) == 1
        expect(page.locator(".choice .finish")).to_have_text("")
        deadline = time.monotonic() + ABORT_DEADLINE
        while metric(url, "nanovllm:num_aborted_requests_total") == aborted_before:
            assert time.monotonic() < deadline, "the engine request was not aborted"
            time.sleep(0.05)
        assert metric(url, "vllm:num_requests_running") == 0
        assert metric(url, "nanovllm:num_free_kv_blocks") == metric(url, "nanovllm:num_kv_blocks")
    finally:
        httpx.post(f"{url}/ui/api/step/resume").raise_for_status()


def test_with_an_api_key_the_page_asks_for_it(page, auth_server, shots):
    page.goto(f"{auth_server.url}/ui")
    expect(page.locator("#key-form")).to_be_visible()
    expect(page.locator("#playground")).to_be_hidden()
    page.screenshot(path=shots / "locked.png")

    page.fill("#key", "not-the-key")
    page.click("#key-form button[type=submit]")
    expect(page.locator("#key-error")).to_contain_text("API key")
    expect(page.locator("#playground")).to_be_hidden()

    page.fill("#key", API_KEY)
    page.click("#key-form button[type=submit]")
    expect(page.locator("#playground")).to_be_visible()
    expect(page.locator("#dummy-notice")).to_be_visible()
    set_controls(page, max_tokens=8)
    generate(page)
    assert len(drawn_tokens(page)) >= 1

    page.reload()  # the key stays with the tab
    expect(page.locator("#playground")).to_be_visible()
    page.click("#forget-key")
    expect(page.locator("#key-form")).to_be_visible()


@pytest.mark.parametrize("path, rendered", [("/docs", ".opblock"), ("/redoc", "[data-section-id]")])
def test_the_api_docs_render_with_no_other_host(page, open_server, path, rendered):
    """Swagger UI and ReDoc draw the API's operations with every request to another host
    refused, as on a machine without internet. (ReDoc's own logo, at the foot of its menu, is
    the one thing it asks of another host.)"""
    outside = []

    def only_this_server(route):
        if route.request.url.startswith(open_server.url):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", only_this_server)
    page.goto(f"{open_server.url}{path}")
    expect(page.locator(rendered).first).to_be_visible(timeout=30_000)
    assert page.locator(rendered).count() >= 5
    assert [url for url in outside if not url.startswith("https://cdn.redoc.ly/redoc/logo")] == []
