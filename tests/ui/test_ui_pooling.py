"""Texts to embed in the engine view, against a real `nanovllm serve` of an embedding model with
--enable-step-mode: the snapshot and the step record say what each sequence and step is (a
pooled text, computed whole, keeping no K/V), and the page shows it in a real browser."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from test_ui_views_browser import open_view
from ui_helpers import snapshot, start_server

TEXTS = ["Hello world", "The cat sat on the mat.", "the dog and the cat"]


@pytest.fixture(scope="module")
def embed_server(tmp_path_factory):
    pytest.importorskip("sentence_transformers")
    from bert_checkpoints import write_st_embedder

    model_dir = write_st_embedder(tmp_path_factory.mktemp("ui-embed") / "st")
    server = start_server(model_dir, "--enable-step-mode")
    yield server
    server.stop()


def embed_while_paused(url: str) -> tuple[threading.Thread, dict]:
    """Pause the engine, then send one embeddings request of TEXTS; it waits in the queue."""
    step(url, "pause")
    done: dict = {}

    def run():
        done["response"] = httpx.post(f"{url}/v1/embeddings", timeout=120,
                                      json={"input": TEXTS})

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 30
    while snapshot(url)["num_waiting"] < len(TEXTS):
        assert time.monotonic() < deadline, "the request never reached the queue"
        time.sleep(0.05)
    return thread, done


def step(url: str, command: str) -> dict:
    response = httpx.post(f"{url}/ui/api/step/{command}", json={"lease": 120}, timeout=60)
    response.raise_for_status()
    return response.json()


def test_the_snapshot_and_the_step_say_the_texts_are_pooled(embed_server):
    url = embed_server.url
    thread, done = embed_while_paused(url)
    try:
        waiting = snapshot(url)["waiting"]
        assert [s["kind"] for s in waiting] == ["embed"] * len(TEXTS)
        assert all(s["num_blocks"] == 0 for s in waiting)

        record = step(url, "step")["record"]
        seqs = [s for s in record["seqs"] if s["action"] != "waiting"]
        assert [(s["action"], s["kind"], s["samples"]) for s in seqs] == \
            [("pool", "embed", False)] * len(TEXTS)
        assert all(s["finished"] and s["blocks_after"] == [] for s in seqs)
        assert "no K/V kept" in seqs[0]["why"]
        inputs = record["inputs"]
        tokens = sum(s["num_tokens"] for s in seqs)
        assert len(inputs["token_ids"]) == len(inputs["row_seq_ids"]) == tokens
        assert inputs["slot_mapping"] == [] and inputs["sample_rows"] == []
        assert record["sampled"] == []
        # (Their blocks are the pool's bookkeeping of the step's size: given back at its end.)
        assert set(record["blocks"]["allocated"]) <= set(record["blocks"]["freed"])
    finally:
        step(url, "resume")
        thread.join(timeout=120)
    assert done["response"].status_code == 200, done["response"].text
    last = snapshot(url)["steps"][-1]
    assert last["num_pooled_tokens"] == last["num_prefill_tokens"] == tokens
    assert last["num_decode_tokens"] == 0


def test_the_engine_view_shows_pooled_texts_and_steps(page, embed_server, shots):
    expect = pytest.importorskip("playwright.sync_api").expect
    url = embed_server.url
    open_view(page, url, "engine")
    thread, done = embed_while_paused(url)
    try:
        waiting = page.locator("#waiting .seq[data-kind=embed]")
        expect(waiting).to_have_count(len(TEXTS), timeout=30_000)
        expect(waiting.first.locator(".detail")).to_contain_text("no KV kept")
        page.click("#step-step")
        expect(page.locator("#record-seqs tr[data-action=pool]")).to_have_count(len(TEXTS))
        expect(page.locator("#record-sampled")).to_contain_text("pooled")
        expect(page.locator("#steps .step.pooling")).not_to_have_count(0, timeout=30_000)
        page.screenshot(path=shots / "pooled-step.png", full_page=True)
    finally:
        step(url, "resume")
        thread.join(timeout=120)
    assert done["response"].status_code == 200, done["response"].text


def test_the_model_views_draw_an_encoder(embed_server):
    """The attention and forward-pass views read the reference path of any model: an
    encoder's answers (its attention is bidirectional), never a server error."""
    url = embed_server.url
    attention = httpx.post(f"{url}/ui/api/attention", timeout=60,
                           json={"prompt": "hello world", "layer": 0, "head": 0})
    trace = httpx.post(f"{url}/ui/api/trace", json={"prompt": "hello world"}, timeout=60)
    assert attention.status_code == 200 and trace.status_code == 200, (attention.text, trace.text)
