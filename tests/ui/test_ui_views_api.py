"""The JSON endpoints of the engine and attention views over real HTTP: their shapes, their
limits (each refusal a 400 naming the field) and the API-key rule. (In a browser:
test_ui_views_browser.py.)"""

from __future__ import annotations

import json
import threading
import time

import httpx
import numpy as np
import pytest
from ui_helpers import API_KEY, snapshot

from nanovllm import AsyncEngine, EngineConfig, LLMEngine
from nanovllm.inspection import Inspector
from nanovllm.model import load_gpt2
from nanovllm.model.architectures import gpt2_reference, llama_reference
from nanovllm.model.architectures.registry import load_checkpoint
from nanovllm.model.architectures.trace import trace_forward
from nanovllm.server.errors import APIError
from nanovllm.server.ui.routes import (
    MAX_ATTENTION_CHARS,
    MAX_ATTENTION_TOKENS,
    AttentionRequest,
    TraceRequest,
    attention_map,
    forward_trace,
)

SNAPSHOT_KEYS = {"num_steps", "blocks", "running", "waiting", "num_running", "num_waiting",
                 "num_preemptions_total", "max_num_seqs", "max_num_batched_tokens", "steps"}
SEQ_KEYS = {"seq_id", "request_id", "index", "kind", "num_prompt_tokens", "num_computed_tokens",
            "num_cached_tokens", "num_output_tokens", "max_tokens", "num_blocks",
            "num_preemptions", "adapter_id"}
PROMPT = "The engine schedules every request in steps of tokens"


def error_of(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    err = response.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["code"] == status
    return err


def in_use(snap: dict) -> int:
    return sum(o >= 0 for o in snap["blocks"]["owner"])


def snapshot_when(url: str, accept, what: str, timeout: float = 30) -> dict:
    """The first snapshot that `accept`s (the timeout only ends a test that would hang)."""
    deadline = time.monotonic() + timeout
    while not accept(snap := snapshot(url)):
        assert time.monotonic() < deadline, f"never saw {what}"
        time.sleep(0.02)
    return snap


def steps_pooled(snap: dict) -> int:
    return sum(s["num_pooled_tokens"] for s in snap["steps"])


def test_the_engine_snapshot_follows_a_request(open_server):
    url = open_server.url
    idle = snapshot_when(url, lambda s: in_use(s) == 0, "an idle engine")
    assert set(idle) == SNAPSHOT_KEYS
    blocks = idle["blocks"]
    assert len(blocks["owner"]) == len(blocks["ref_count"]) == len(blocks["cached"]) == 256
    assert blocks["block_size"] == 16 and idle["running"] == [] and idle["num_running"] == 0

    done = threading.Event()

    def complete():
        httpx.post(f"{url}/v1/completions", timeout=120, json=dict(
            prompt=PROMPT, max_tokens=200, n=2, ignore_eos=True)).raise_for_status()
        done.set()

    thread = threading.Thread(target=complete)
    thread.start()
    busy = snapshot_when(url, lambda s: s["num_running"] == 2 or done.is_set(),
                         "the request running")
    assert not done.is_set(), "the request finished before any snapshot showed it"
    [first, second] = busy["running"]
    assert set(first) == SEQ_KEYS and first["request_id"] == second["request_id"]
    assert first["kind"] == "generate" and steps_pooled(busy) == 0
    assert (first["index"], second["index"], first["max_tokens"]) == (0, 1, 200)
    owners = busy["blocks"]["owner"]
    assert {o for o in owners if o >= 0} <= {first["seq_id"], second["seq_id"]}
    assert in_use(busy) > 0
    thread.join()

    after = snapshot_when(url, lambda s: in_use(s) == 0, "all blocks free")
    assert after["blocks"]["ref_count"] == [0] * 256 and after["running"] == []
    assert after["num_steps"] > busy["num_steps"]
    steps = after["steps"]
    assert steps and set(steps[-1]) == {"num_prefill_tokens", "num_pooled_tokens",
                                        "num_decode_tokens", "seconds", "num_seqs",
                                        "num_preemptions", "num_proposed", "num_accepted"}
    assert steps[-1]["num_decode_tokens"] >= 1 and steps[-1]["num_proposed"] == 0


def attention(url: str, headers=None, **body) -> httpx.Response:
    return httpx.post(f"{url}/ui/api/attention", json=body, headers=headers, timeout=60)


def test_attention_is_the_reference_paths(open_server, tiny_ckpt):
    got = attention(open_server.url, prompt=PROMPT, layer=1, head=2)
    assert got.status_code == 200, got.text
    data = got.json()
    ids = httpx.post(f"{open_server.url}/tokenize", json={"prompt": PROMPT}).json()["tokens"]
    assert data["token_ids"] == ids and len(data["tokens"]) == len(ids)
    assert (data["layer"], data["head"], data["n_layer"], data["n_head"]) == (1, 2, 2, 4)
    assert (data["kv_head"], data["num_kv_heads"]) == (2, 4)  # GPT-2: every head its own
    assert [len(row) for row in data["weights"]] == list(range(1, len(ids) + 1))  # causal rows
    cfg, weights = load_gpt2(tiny_ckpt)
    expected = gpt2_reference.attention_weights(weights, cfg, np.asarray(ids))[1, 2]
    for i, row in enumerate(data["weights"]):
        np.testing.assert_allclose(row, expected[i, :i + 1], atol=6e-5)
        assert sum(row) == pytest.approx(1, abs=1e-3)


def test_grouped_heads_are_the_llama_reference_paths(llama_server, llama_ckpt):
    """A grouped-query Llama: each query head's map is the Llama reference's, the answer names
    the key/value head it reads, and heads sharing one still differ (their own queries)."""
    url = llama_server.url
    info = httpx.get(f"{url}/ui/api/info").json()
    assert (info["n_layer"], info["n_head"], info["num_kv_heads"]) == (2, 4, 2)
    assert info["architecture"] == "LlamaForCausalLM"  # what a random-weights notice names
    cfg, weights = load_checkpoint(llama_ckpt("llama-gqa"))
    maps = []
    for head in range(4):
        got = attention(url, prompt=PROMPT, layer=1, head=head)
        assert got.status_code == 200, got.text
        data = got.json()
        assert (data["head"], data["kv_head"], data["num_kv_heads"]) == (head, head // 2, 2)
        maps.append(data["weights"])
    ids = data["token_ids"]
    assert ids == httpx.post(f"{url}/tokenize", json={"prompt": PROMPT}).json()["tokens"]
    config = json.loads((llama_ckpt("llama-gqa") / "config.json").read_text())
    assert ids[0] == config["bos_token_id"]  # the tokenizer's own BOS, attended to like a token
    expected = llama_reference.attention_weights(weights, cfg, np.asarray(ids))[1]
    for head, rows in enumerate(maps):
        for i, row in enumerate(rows):
            np.testing.assert_allclose(row, expected[head, i, :i + 1], atol=6e-5)
    assert maps[2] != maps[3], "query heads of one group have their own queries"

    trace_data = trace(url, prompt=PROMPT).json()
    assert (trace_data["n_head"], trace_data["num_kv_heads"]) == (4, 2)
    assert trace_data["attention"][1] == maps
    final = llama_reference.forward(weights, cfg, np.asarray(ids)).argmax(-1)
    assert [top[0] for top in trace_data["lens_token_ids"][-1]] == final.tolist()


@pytest.mark.parametrize("body, param, words", [
    (dict(prompt=""), "prompt", "at least 1 character"),
    (dict(prompt="x" * (MAX_ATTENTION_CHARS + 1)), "prompt", f"at most {MAX_ATTENTION_CHARS}"),
    (dict(prompt=" a" * (MAX_ATTENTION_TOKENS + 1)), "prompt", f"1 to {MAX_ATTENTION_TOKENS} tokens"),
    (dict(prompt=PROMPT, layer=2), "layer", "below n_layer=2"),
    (dict(prompt=PROMPT, head=4), "head", "below n_head=4"),
    (dict(prompt=PROMPT, layer=-1), "layer", "greater than or equal to 0"),
    (dict(prompt=PROMPT, layer="1"), "layer", "valid integer"),
    (dict(prompt=PROMPT, head=True), "head", "valid integer"),
    (dict(prompt=PROMPT, head=1.5), "head", "valid integer"),
    (dict(prompt=[1, 2, 3]), "prompt", "valid string"),
    (dict(prompt=PROMPT, extra=1), "extra", "not permitted"),
    (dict(), "prompt", "Missing required field"),
])
def test_attention_refuses_what_it_cannot_draw(open_server, body, param, words):
    err = error_of(attention(open_server.url, **body), 400)
    assert err["param"] == param and words in err["message"], err


def test_attention_computes_one_map_at_a_time(tiny_ckpt):
    """While a map is being computed (the lock held), another is refused with a 429."""
    engine = LLMEngine(EngineConfig(model=str(tiny_ckpt), num_kv_blocks=16))
    client = AsyncEngine(engine)  # not started: attention never uses the engine thread
    inspector = Inspector(client)
    busy = threading.Lock()
    body = AttentionRequest(prompt=PROMPT, layer=0, head=0)
    assert len(attention_map(client, inspector, busy, body)["weights"]) > 1
    with busy:
        with pytest.raises(APIError) as refused:
            attention_map(client, inspector, busy, body)
    assert refused.value.status == 429 and "one attention map or forward trace at a time" in (
        refused.value.message)
    assert not busy.locked()
    with busy:  # the forward trace waits for the same lock
        with pytest.raises(APIError) as refused:
            forward_trace(client, inspector, busy, TraceRequest(prompt=PROMPT))
    assert refused.value.status == 429 and not busy.locked()


def trace(url: str, headers=None, **body) -> httpx.Response:
    return httpx.post(f"{url}/ui/api/trace", json=body, headers=headers, timeout=60)


def test_the_forward_trace_is_model_traces(open_server, tiny_ckpt):
    got = trace(open_server.url, prompt=PROMPT)
    assert got.status_code == 200, got.text
    data = got.json()
    ids = data["token_ids"]
    t, stages = len(ids), 3  # the embeddings, then after each of the 2 layers
    cfg, weights = load_gpt2(tiny_ckpt)
    expected = trace_forward(weights, cfg, np.asarray(ids))
    assert (data["n_layer"], data["n_head"]) == (2, 4) and len(data["tokens"]) == t
    assert data["lens_token_ids"] == expected.lens_token_ids.tolist()
    assert [[len(ts) for ts in stage] for stage in data["lens_tokens"]] == [[5] * t] * stages
    np.testing.assert_allclose(data["lens_probs"], expected.lens_probs, atol=6e-5)
    np.testing.assert_allclose(data["residual_norm"], expected.residual_norm, atol=6e-5, rtol=1e-6)
    np.testing.assert_allclose(data["final_token_prob"], expected.final_token_prob, atol=6e-5)
    assert len(data["attention"]) == 2 and all(len(layer) == 4 for layer in data["attention"])
    for layer, heads in enumerate(data["attention"]):
        for head, rows in enumerate(heads):
            assert [len(r) for r in rows] == list(range(1, t + 1))
            np.testing.assert_allclose(rows[-1], expected.attention[layer, head, -1], atol=6e-5)


@pytest.mark.parametrize("body, param, words", [
    (dict(prompt=""), "prompt", "at least 1 character"),
    (dict(prompt=" a" * (MAX_ATTENTION_TOKENS + 1)), "prompt", "forward-pass view takes prompts"),
    (dict(prompt=PROMPT, layer=0), "layer", "not permitted"),
    (dict(prompt=7), "prompt", "valid string"),
])
def test_the_forward_trace_refuses_what_it_cannot_draw(open_server, body, param, words):
    err = error_of(trace(open_server.url, **body), 400)
    assert err["param"] == param and words in err["message"], err


def test_info_gives_the_views_their_limits(open_server):
    info = httpx.get(f"{open_server.url}/ui/api/info").json()
    assert (info["n_layer"], info["n_head"], info["num_kv_heads"]) == (2, 4, 4)
    assert info["max_attention_tokens"] == MAX_ATTENTION_TOKENS


def test_the_views_data_needs_the_api_key(auth_server):
    url, key = auth_server.url, {"Authorization": f"Bearer {API_KEY}"}
    error_of(httpx.get(f"{url}/ui/api/engine"), 401)
    error_of(httpx.get(f"{url}/ui/api/engine", headers={"Authorization": "Bearer wrong"}), 401)
    error_of(attention(url, prompt=PROMPT), 401)
    error_of(trace(url, prompt=PROMPT), 401)
    assert trace(url, headers=key, prompt=PROMPT).status_code == 200
    assert set(snapshot(url, headers=key)) == SNAPSHOT_KEYS
    assert attention(url, headers=key, prompt=PROMPT).status_code == 200
