"""The engine view and the attention view in a real browser (Debian's chromium through
playwright) against a real `nanovllm serve` on the tiny checkpoint (and a tiny grouped-query
Llama for the grouped heads)."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from ui_helpers import API_KEY, metric, snapshot, start_server

sync_api = pytest.importorskip("playwright.sync_api",
                               reason="playwright is missing: `make setup-dev` installs it")
expect = sync_api.expect

# 20 tokens and more: a full block (16 tokens) that the n samples of a request share.
PROMPT = ("The engine schedules every request in steps: it computes the prompt in chunks, "
          "then one token per step for each running sequence.")
BUSY = "#blocks .block[data-state=used], #blocks .block[data-state=shared]"

# Records, from inside the page, how many blocks each drawn snapshot showed in use: the only
# way to see every state the grid went through.
RECORD_BLOCKS_IN_USE = """() => {
  window.blocksInUse = [];
  new MutationObserver(() => {
    window.blocksInUse.push(document.querySelectorAll(
      '#blocks .block[data-state=used], #blocks .block[data-state=shared]').length);
  }).observe(document.querySelector('#blocks'), {attributes: true, subtree: true, childList: true});
}"""


# Records the most of each that any drawn snapshot showed: on a fast machine a whole run can
# fit between two of playwright's retries of an expect(), so transient states are counted in
# the page, as they are drawn, and asserted once the requests are done.
RECORD_MOST_SEEN = """() => {
  const count = (selector) => document.querySelectorAll(selector).length;
  window.mostSeen = {running: 0, shared: 0};
  new MutationObserver(() => {
    window.mostSeen.running = Math.max(window.mostSeen.running, count('#running .seq'));
    window.mostSeen.shared = Math.max(window.mostSeen.shared,
                                      count('#blocks .block[data-state=shared]'));
  }).observe(document.querySelector('#engine'), {attributes: true, subtree: true, childList: true});
}"""


def open_view(page, url: str, tab: str) -> None:
    page.goto(f"{url}/ui")
    expect(page.locator("#playground")).to_be_visible()
    page.click(f"[role=tab][aria-controls={tab}]")
    expect(page.locator(f"#{tab}")).to_be_visible()


def complete_in_background(url: str, **body) -> threading.Thread:
    def run():
        httpx.post(f"{url}/v1/completions", timeout=300, json=dict(prompt=PROMPT, **body))

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def drawn_soon(locator) -> bool:
    """Whether the page draws `locator` within a second (a poll or two of the snapshot)."""
    try:
        expect(locator.first).to_be_visible(timeout=1_000)
    except AssertionError:
        return False
    return True


def step_until(url: str, condition, what: str) -> None:
    """Step the paused engine until `condition()` holds."""
    deadline = time.monotonic() + 60
    while not condition():
        assert time.monotonic() < deadline, f"never: {what}"
        httpx.post(f"{url}/ui/api/step/step", json={"lease": 120}, timeout=60).raise_for_status()


def test_the_block_grid_follows_requests_and_returns_to_free(page, steppable_server, shots):
    """The engine paused and stepped until both requests run, so the page sees them running
    (unpaused, the tiny model can finish them between two of the page's polls)."""
    url = steppable_server.url
    open_view(page, url, "engine")
    expect(page.locator("#blocks .block")).to_have_count(256)
    expect(page.locator(BUSY)).to_have_count(0)
    page.evaluate(RECORD_BLOCKS_IN_USE)
    page.evaluate(RECORD_MOST_SEEN)

    httpx.post(f"{url}/ui/api/step/pause", json={"lease": 120}).raise_for_status()
    try:
        threads = [complete_in_background(url, max_tokens=200, ignore_eos=True, n=2),
                   complete_in_background(url, max_tokens=150, ignore_eos=True)]
        # Three sequences: the n=2 request's two samples and the other request. Whether the
        # second sample runs in the same step as the others depends on which request the server
        # got first, so step until all three run (waiting for two requests failed CI once).
        step_until(url, lambda: snapshot(url)["num_running"] == 3, "all three sequences run")
        assert metric(url, "vllm:num_requests_running") == 2
        expect(page.locator("#running .seq")).to_have_count(3, timeout=30_000)
        shared = page.locator("#blocks .block[data-state=shared]")
        step_until(url, lambda: drawn_soon(shared), "a shared block")
        expect(page.locator("#steps .step").first).to_be_visible()
        page.screenshot(path=shots / "engine.png")
    finally:
        httpx.post(f"{url}/ui/api/step/resume").raise_for_status()
    for thread in threads:
        thread.join()
    seen = page.evaluate("window.mostSeen")
    assert seen["running"] > 0 and seen["shared"] > 0, seen  # the n=2 samples share a block

    expect(page.locator(BUSY)).to_have_count(0, timeout=30_000)
    expect(page.locator("[data-engine=used]")).to_have_text("0 / 256")
    expect(page.locator("#running .seq")).to_have_count(0)
    in_use = page.evaluate("window.blocksInUse")
    assert max(in_use) > 0 and in_use[-1] == 0, in_use
    # Full blocks computed by those requests stay findable in the prefix cache.
    assert page.locator("#blocks .block[data-state=cached]").count() > 0


def test_preemptions_show_in_the_engine_view(browser, tiny_ckpt, shots):
    """A pool too small for everyone: sequences are preempted, and the page says so. Stepped
    until the first preemption and paused there, so the page sees it (unpaused, the tiny
    model can get past it between two of the page's polls)."""
    server = start_server(tiny_ckpt, "--num-kv-blocks", "40", "--max-num-batched-tokens", "64",
                          "--enable-step-mode")
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    url = server.url
    try:
        page = context.new_page()
        open_view(page, url, "engine")
        # Six sequences of 248 tokens at once need 96 blocks: some must give theirs back.
        page.evaluate(RECORD_MOST_SEEN)
        httpx.post(f"{url}/ui/api/step/pause", json={"lease": 120}).raise_for_status()
        try:
            threads = [complete_in_background(url, max_tokens=200, ignore_eos=True)
                       for _ in range(6)]
            step_until(url, lambda: metric(url, "vllm:num_preemptions_total") > 0,
                       "a preemption")
            expect(page.locator("#preemptions .event").first).to_be_visible(timeout=30_000)
        finally:
            httpx.post(f"{url}/ui/api/step/resume").raise_for_status()
        for thread in threads:
            thread.join()
        assert page.evaluate("window.mostSeen.running") > 0
        expect(page.locator(BUSY)).to_have_count(0, timeout=30_000)
        assert int(page.locator("[data-engine=preemptions]").inner_text()) > 0
        # A preempted sequence stays listed, marked, until it finishes: some snapshot showed it.
        expect(page.locator("#preemptions .event").first).to_contain_text("preempted")
        page.screenshot(path=shots / "engine-preemption.png")
    finally:
        context.close()
        server.stop()


def test_speculation_shows_in_the_engine_view(browser, tiny_ckpt, shots):
    """`nanovllm serve --speculative-config`: the strip of steps shows proposals accepted and
    rejected, and the caption counts them (a draft identical to the target: none rejected)."""
    # k = 3 every step: the target as its own draft never pays, so the adaptive rule stays out
    spec = f'{{"model": "{tiny_ckpt}", "num_speculative_tokens": 3, "adaptive": false}}'
    server = start_server(tiny_ckpt, "--speculative-config", spec)
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        page = context.new_page()
        open_view(page, server.url, "engine")
        complete_in_background(server.url, max_tokens=60, ignore_eos=True,
                               temperature=0).join()
        caption = page.locator("#steps-caption")
        expect(caption).to_contain_text("speculation:", timeout=30_000)
        expect(caption).to_contain_text(" 0 rejected")
        assert page.locator("#steps .accepted").count() > 0
        page.screenshot(path=shots / "engine-speculation.png")
    finally:
        context.close()
        server.stop()


def attention_api(url: str, **body) -> dict:
    response = httpx.post(f"{url}/ui/api/attention", json=body, timeout=60)
    response.raise_for_status()
    return response.json()


def cell_weights(page) -> list[float]:
    return [float(w) for w in page.locator("#heatmap rect.cell:not(.future)").evaluate_all(
        "cells => cells.map(c => c.dataset.weight)")]


def test_the_attention_heatmap_draws_each_layer_and_head(page, open_server, shots):
    url = open_server.url
    prompt = "The cat sat on the mat because it was tired"
    open_view(page, url, "attention")
    expect(page.locator("#attn-layer option")).to_have_count(2)
    expect(page.locator("#attn-head option")).to_have_count(4)
    # The expected map first: the server computes one at a time and answers a second with a
    # 429, so asking while the page's own request runs can fail either of them.
    expected = attention_api(url, prompt=prompt, layer=0, head=0)
    page.fill("#attn-prompt", prompt)
    page.click("#attn-show")
    t = len(expected["tokens"])
    expect(page.locator("#heatmap svg rect")).to_have_count(t * t)
    expect(page.locator("#heatmap rect.future")).to_have_count(t * (t - 1) // 2)
    expect(page.locator("#heatmap .row-label")).to_have_count(t)
    expect(page.locator("#attn-status")).to_contain_text(f"{t} tokens")
    flat = [w for row in expected["weights"] for w in row]
    assert cell_weights(page) == flat
    page.screenshot(path=shots / "attention.png")

    page.select_option("#attn-head", "3")
    expect(page.locator("#heatmap")).to_have_attribute("data-head", "3")
    other = attention_api(url, prompt=prompt, layer=0, head=3)
    assert cell_weights(page) == [w for row in other["weights"] for w in row] != flat
    page.select_option("#attn-layer", "1")
    expect(page.locator("#heatmap")).to_have_attribute("data-layer", "1")
    last = attention_api(url, prompt=prompt, layer=1, head=3)
    assert cell_weights(page) == [w for row in last["weights"] for w in row]


def test_grouped_query_heads_are_shown_under_their_key_value_head(page, llama_server, shots):
    """A Llama with 4 query heads reading 2 key/value heads: the head menu lists the query
    heads under the key/value head they share, the status names it, and the forward-pass view
    boxes each layer's heads by group."""
    url = llama_server.url
    prompt = "The cat sat on the mat because it was tired"
    open_view(page, url, "attention")
    groups = page.locator("#attn-head optgroup")
    expect(groups).to_have_count(2)
    assert groups.evaluate_all("gs => gs.map(g => g.label)") == [
        "KV head 0 (query heads 0–1)", "KV head 1 (query heads 2–3)"]
    assert groups.nth(1).locator("option").evaluate_all("os => os.map(o => o.value)") == ["2", "3"]
    page.fill("#attn-prompt", prompt)
    page.select_option("#attn-layer", "1")
    page.click("#attn-show")
    expect(page.locator("#heatmap svg")).to_have_count(1)
    page.select_option("#attn-head", "3")
    expect(page.locator("#heatmap")).to_have_attribute("data-head", "3")
    expect(page.locator("#heatmap")).to_have_attribute("data-kv-head", "1")
    expect(page.locator("#attn-status")).to_contain_text(
        "head 3 of 4 · reads key/value head 1 of 2, shared by query heads 2, 3")
    expected = attention_api(url, prompt=prompt, layer=1, head=3)
    assert cell_weights(page) == [w for row in expected["weights"] for w in row]
    page.screenshot(path=shots / "attention-grouped.png")

    open_view(page, url, "trace")
    page.fill("#trace-prompt", prompt)
    page.click("#trace-show")
    boxes = page.locator("#trace-heads .kv-group")
    expect(boxes).to_have_count(2)
    expect(boxes.locator("h3")).to_have_text(["KV head 0 (query heads 0–1)",
                                              "KV head 1 (query heads 2–3)"])
    for g in range(2):
        assert boxes.nth(g).locator("figure").evaluate_all(
            "fs => fs.map(f => f.dataset.head)") == [str(2 * g), str(2 * g + 1)]
    page.screenshot(path=shots / "trace-grouped.png", full_page=True)


def test_a_prompt_too_long_for_the_heatmap_is_refused_clearly(page, open_server):
    prompt = " word" * 80
    count = httpx.post(f"{open_server.url}/tokenize", json={"prompt": prompt}).json()["count"]
    assert count > 64
    open_view(page, open_server.url, "attention")
    page.fill("#attn-prompt", prompt)
    page.click("#attn-show")
    expect(page.locator("#attn-status")).to_contain_text(
        f"1 to 64 tokens; this prompt is {count} tokens")
    expect(page.locator("#attn-status")).to_have_class("status error")
    expect(page.locator("#heatmap svg")).to_have_count(0)


def test_with_an_api_key_the_views_use_it(page, auth_server):
    page.goto(f"{auth_server.url}/ui")
    page.fill("#key", API_KEY)
    page.click("#key-form button[type=submit]")
    expect(page.locator("#playground")).to_be_visible()
    page.click("[role=tab][aria-controls=engine]")
    expect(page.locator("[data-engine=used]")).to_have_text("0 / 256")
    page.click("[role=tab][aria-controls=attention]")
    page.click("#attn-show")
    expect(page.locator("#heatmap svg")).to_have_count(1)


def test_the_forward_pass_view_shows_every_layer(page, open_server, shots):
    """The logit lens has a row for the embeddings and one per layer, its last row is the
    model's output, and every layer's heads can be drawn."""
    url = open_server.url
    prompt = "The cat sat on the mat because it was tired"
    open_view(page, url, "trace")
    response = httpx.post(f"{url}/ui/api/trace", json={"prompt": prompt}, timeout=60)
    assert response.status_code == 200, response.text  # (before the page asks: one at a time)
    expected = response.json()
    page.fill("#trace-prompt", prompt)
    page.click("#trace-show")
    t = len(expected["tokens"])
    expect(page.locator("#lens-table tbody tr")).to_have_count(3)  # embeddings + 2 layers
    expect(page.locator("#lens-table th.stage")).to_have_text(
        ["embeddings", "after layer 0", "after layer 1"])
    expect(page.locator("#lens-table .lens-cell")).to_have_count(3 * t)
    expect(page.locator("#trace-status")).to_contain_text(f"{t} tokens through 2 layers")
    last = page.locator("#lens-table tbody tr[data-stage='2'] .lens-cell")
    assert last.evaluate_all("cells => cells.map(c => c.dataset.token)") == [
        top[0] for top in expected["lens_tokens"][2]]
    # The last row is the model's answer: every cell of it is marked final.
    expect(page.locator("#lens-table tbody tr[data-stage='2'] .lens-cell.final")).to_have_count(t)
    expect(page.locator("#trace-heads figure")).to_have_count(4)
    expect(page.locator("#trace-heads")).to_have_attribute("data-layer", "0")
    page.screenshot(path=shots / "trace.png", full_page=True)
    for layer in range(2):
        page.click(f"#lens-table th.stage[data-layer='{layer}']")
        expect(page.locator("#trace-heads")).to_have_attribute("data-layer", str(layer))
        expect(page.locator("#trace-heads svg")).to_have_count(4)
        weights = page.locator("#trace-heads figure").nth(3).locator("rect.cell:not(.future)")
        flat = [float(w) for w in weights.evaluate_all("cs => cs.map(c => c.dataset.weight)")]
        assert flat == [w for row in expected["attention"][layer][3] for w in row]
