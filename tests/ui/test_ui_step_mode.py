"""Step mode over HTTP and in a real browser: off unless --enable-step-mode, guarded by the API
key, and on the page Pause (a request waits in the queue), Step (its prefill chunk appears with
its blocks), Resume (it finishes). /health and /metrics answer while paused."""

from __future__ import annotations

import threading

import httpx
import pytest
from test_ui_views_browser import PROMPT, open_view
from ui_helpers import API_KEY, start_server

sync_api = pytest.importorskip("playwright.sync_api",
                               reason="playwright is missing: `make setup-dev` installs it")
expect = sync_api.expect


@pytest.fixture(scope="module")
def step_server(tiny_ckpt):
    server = start_server(tiny_ckpt, "--enable-step-mode", "--max-num-batched-tokens", "16")
    yield server
    server.stop()


def test_step_mode_is_off_by_default(open_server):
    for path in ("pause", "step", "resume"):
        response = httpx.post(f"{open_server.url}/ui/api/step/{path}")
        assert response.status_code == 404 and "--enable-step-mode" in response.text
    assert httpx.get(f"{open_server.url}/ui/api/info").json()["step_mode"] is False


def test_step_mode_needs_the_api_key(tiny_ckpt):
    server = start_server(tiny_ckpt, "--enable-step-mode", "--api-key", API_KEY)
    try:
        assert httpx.post(f"{server.url}/ui/api/step/pause").status_code == 401
        key = {"Authorization": f"Bearer {API_KEY}"}
        paused = httpx.post(f"{server.url}/ui/api/step/pause", headers=key, json={"lease": 5})
        assert paused.status_code == 200 and paused.json()["paused"] is True
        bad = httpx.post(f"{server.url}/ui/api/step/pause", headers=key, json={"lease": 601})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "lease"
        assert httpx.post(f"{server.url}/ui/api/step/resume", headers=key).json()["paused"] is False
    finally:
        server.stop()


def test_pause_a_request_waits_step_shows_its_chunk_resume_finishes(page, step_server, shots):
    url = step_server.url
    open_view(page, url, "engine")
    expect(page.locator("#step-bar")).to_be_visible()
    page.click("#step-pause")
    expect(page.locator("#step-status")).to_contain_text("paused")
    done = {}

    def complete():
        done["response"] = httpx.post(f"{url}/v1/completions", timeout=300, json=dict(
            prompt=PROMPT, max_tokens=4, ignore_eos=True))

    thread = threading.Thread(target=complete)
    thread.start()
    expect(page.locator("#waiting .seq")).to_have_count(1, timeout=30_000)  # it waits, visibly
    assert httpx.get(f"{url}/health").status_code == 200  # a paused engine still answers
    assert httpx.get(f"{url}/metrics").status_code == 200
    assert "response" not in done

    page.click("#step-step")
    expect(page.locator("#step-record")).to_be_visible()
    expect(page.locator("#record-step")).to_have_text("1")
    expect(page.locator("#record-seqs tr[data-action=prefill]")).to_have_count(1)
    # A 16-token chunk (the step's budget): 16 columns, its blocks newly allocated.
    expect(page.locator("#record-inputs tr[data-row=token_ids] td")).to_have_count(16)
    expect(page.locator("#blocks .block[data-change=allocated]")).to_have_count(1)
    expect(page.locator("#running .seq")).to_have_count(1, timeout=30_000)
    page.screenshot(path=shots / "step.png", full_page=True)
    assert "response" not in done

    page.click("#step-resume")
    expect(page.locator("#step-status")).to_have_text("running")
    thread.join(timeout=120)
    assert done["response"].status_code == 200, done["response"].text
    assert done["response"].json()["usage"]["completion_tokens"] == 4
    expect(page.locator("#running .seq")).to_have_count(0, timeout=30_000)
