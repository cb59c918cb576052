"""LoRA adapters served: `nanovllm serve --enable-lora --lora-modules ...` (a real server process,
its engine in a process of its own) answers the real `openai` client with PEFT's merged model's
greedy tokens when "model" names an adapter, the base model's otherwise; /v1/models lists the
adapters under their base; adapters load and unload at run time behind the API key, and a bad
one is a 400 naming it, with nothing loaded."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import anthropic
import httpx
import openai
import pytest
import torch
from lora_checkpoints import hf_base, hf_merged
from prometheus_client.parser import text_string_to_metric_families

from tests.server.server_helpers import ServeProcess

KEY = "sk-lora"
PROMPT = [5, 17, 300, 2, 41, 9]
NUM_TOKENS = 8
CHAT_TEMPLATE = Path(__file__).parents[2] / "examples" / "chat_template_gpt2.jinja"


def greedy(hf) -> list[int]:
    with torch.no_grad():
        out = hf.generate(torch.tensor([PROMPT]), do_sample=False, max_new_tokens=NUM_TOKENS,
                          min_new_tokens=NUM_TOKENS, pad_token_id=0)
    return out[0, len(PROMPT):].tolist()


@pytest.fixture(scope="module")
def server(tiny_ckpt, lora_adapter):
    first = json.dumps({"name": "second", "path": str(lora_adapter("gpt2", seed=2)),
                        "base_model_name": "tiny"})
    srv = ServeProcess(str(tiny_ckpt), "--num-kv-blocks", "128", "--served-model-name", "tiny",
                       "--api-key", KEY, "--chat-template", str(CHAT_TEMPLATE), "--enable-lora", "--max-loras", "3",
                       # one sequence per step, stepped by hand: the metrics test's queue
                       "--max-num-seqs", "1", "--enable-step-mode", "--lora-modules",
                       f"first={lora_adapter('gpt2', seed=1)}", first)
    srv.wait_ready()
    yield srv
    srv.kill()


def tokens(client: openai.OpenAI, model: str, prompt: list[int] = PROMPT) -> list[int]:
    out = client.completions.create(model=model, prompt=prompt, max_tokens=NUM_TOKENS,
                                    temperature=0, logprobs=1,
                                    extra_body={"min_tokens": NUM_TOKENS,
                                                "return_tokens_as_token_ids": True})
    return [int(t.removeprefix("token_id:")) for t in out.choices[0].logprobs.tokens]


def test_served_adapters(server, tiny_ckpt, lora_adapter, tmp_path):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY)
    models = {m.id: m for m in client.models.list().data}
    assert set(models) == {"tiny", "first", "second"}
    assert models["first"].parent == models["second"].parent == "tiny"
    assert tokens(client, "first") == greedy(hf_merged(tiny_ckpt, lora_adapter("gpt2", seed=1)))
    assert tokens(client, "second") == greedy(hf_merged(tiny_ckpt, lora_adapter("gpt2", seed=2)))
    assert tokens(client, "tiny") == greedy(hf_base(tiny_ckpt))

    third = lora_adapter("gpt2", seed=3)
    http = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"})
    body = {"lora_name": "third", "lora_path": str(third)}
    assert httpx.post(f"{server.url}/v1/load_lora_adapter", json=body).status_code == 401
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 8}))
    refused = http.post("/v1/load_lora_adapter", json={"lora_name": "bad", "lora_path": str(bad)})
    assert refused.status_code == 400
    assert "LoRA adapter 'bad'" in refused.json()["error"]["message"]
    assert "adapter_model.safetensors is missing" in refused.json()["error"]["message"]
    loaded = http.post("/v1/load_lora_adapter", json=body)
    assert loaded.status_code == 200, (loaded.text, server.log[-3000:])
    assert http.post("/v1/load_lora_adapter", json=body).status_code == 400  # name taken
    assert tokens(client, "third") == greedy(hf_merged(tiny_ckpt, third))
    assert http.post("/v1/unload_lora_adapter", json={"lora_name": "third"}).status_code == 200
    assert http.post("/v1/unload_lora_adapter", json={"lora_name": "third"}).status_code == 404
    assert {m.id for m in client.models.list().data} == {"tiny", "first", "second"}
    with pytest.raises(openai.NotFoundError):
        tokens(client, "third")


def test_chat_runs_the_adapter_it_names(server):
    """The chat path (and so Responses and Messages) runs the adapter "model" names: its tokens
    are the completion's of the rendered conversation, under that adapter."""
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY)
    messages = [{"role": "user", "content": "Hello there"}]
    rendered = httpx.post(f"{server.url}/tokenize", headers={"Authorization": f"Bearer {KEY}"},
                          json={"model": "first", "messages": messages}).json()["tokens"]

    def chat(model: str) -> list[int]:
        out = client.chat.completions.create(
            model=model, messages=messages, max_tokens=NUM_TOKENS, temperature=0, logprobs=True,
            extra_body={"min_tokens": NUM_TOKENS, "return_tokens_as_token_ids": True})
        return [int(t.token.removeprefix("token_id:")) for t in out.choices[0].logprobs.content]

    assert chat("first") == tokens(client, "first", rendered)
    assert chat("tiny") == tokens(client, "tiny", rendered) != chat("first")


@pytest.mark.parametrize("flags,problem", [
    (["--enable-lora", "--lora-modules", "gone=/nonexistent/adapter"],
     "LoRA adapter 'gone' (/nonexistent/adapter): adapter_config.json is missing"),
    (["--lora-modules", "x=/tmp"], "--lora-modules needs --enable-lora"),
    (["--enable-lora", "--lora-modules", "no-path"], "expected name=path or JSON"),
], ids=["missing", "not-enabled", "malformed"])
def test_a_bad_start_up_adapter_stops_the_server_naming_it(tiny_ckpt, flags, problem):
    srv = ServeProcess(str(tiny_ckpt), "--num-kv-blocks", "64", *flags)
    try:
        assert srv.proc.wait(120) != 0
    finally:
        srv.kill()
    assert problem in srv.log


@pytest.mark.parametrize("model", ["first", "tiny"])
def test_responses_echo_the_adapter_they_ran(server, model):
    """Every generating API's response (streamed or not) names the model the request asked
    for: the adapter's name, not its base's (vLLM's behaviour)."""
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY)
    claude = anthropic.Anthropic(base_url=server.url, api_key=KEY, max_retries=0)
    messages = [{"role": "user", "content": "Hi"}]
    short = dict(max_tokens=2, temperature=0)
    assert client.completions.create(model=model, prompt=PROMPT, **short).model == model
    for chunk in client.completions.create(model=model, prompt=PROMPT, stream=True, **short):
        assert chunk.model == model
    assert client.chat.completions.create(model=model, messages=messages, **short).model == model
    for chunk in client.chat.completions.create(model=model, messages=messages, stream=True,
                                                **short):
        assert chunk.model == model
    assert client.responses.create(model=model, input="Hi", max_output_tokens=2).model == model
    events = list(client.responses.create(model=model, input="Hi", max_output_tokens=2,
                                          stream=True))
    assert {e.response.model for e in events if hasattr(e, "response")} == {model}
    assert claude.messages.create(model=model, messages=messages, max_tokens=2).model == model
    with claude.messages.stream(model=model, messages=messages, max_tokens=2) as stream:
        assert stream.get_final_message().model == model


def lora_info(http: httpx.Client) -> dict[str, str]:
    """The labels of vllm:lora_requests_info on /metrics."""
    families = text_string_to_metric_families(http.get("/metrics").text)
    [sample] = next(f for f in families if f.name == "vllm:lora_requests_info").samples
    return sample.labels


def until_lora_info(http: httpx.Client, **labels: str) -> dict[str, str]:
    """The labels once they show `labels` (the engine's stats reach the server on their own
    schedule after an add), or the last ones seen."""
    for _ in range(600):
        info = lora_info(http)
        if labels.items() <= info.items():
            break
        time.sleep(0.05)
    return info


def test_metrics_name_the_running_and_waiting_adapters(server):
    """vLLM's vllm:lora_requests_info names the adapters of the running and of the waiting
    requests: with the engine paused and one sequence a step, a first request waits, then runs
    while a second waits."""
    http = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"},
                        timeout=60)
    assert lora_info(http) == {"model_name": "tiny", "max_lora": "3",
                               "waiting_lora_adapters": "", "running_lora_adapters": ""}
    assert http.post("/ui/api/step/pause", json={"lease": 60}).status_code == 200
    answers = []

    def complete(model: str) -> threading.Thread:
        body = {"model": model, "prompt": PROMPT, "max_tokens": 4}
        thread = threading.Thread(target=lambda: answers.append(
            http.post("/v1/completions", json=body)))
        thread.start()
        return thread

    threads = [complete("first")]
    try:
        assert until_lora_info(http, waiting_lora_adapters="first")["running_lora_adapters"] == ""
        threads.append(complete("second"))
        until_lora_info(http, waiting_lora_adapters="first,second")
        assert http.post("/ui/api/step/step").status_code == 200  # admits the first
        info = until_lora_info(http, running_lora_adapters="first")
        assert (info["running_lora_adapters"], info["waiting_lora_adapters"]) == \
            ("first", "second")
    finally:
        http.post("/ui/api/step/resume")
        for thread in threads:
            thread.join()
    assert [a.status_code for a in answers] == [200] * len(threads)
    info = until_lora_info(http, waiting_lora_adapters="", running_lora_adapters="")
    assert (info["running_lora_adapters"], info["waiting_lora_adapters"]) == ("", "")
