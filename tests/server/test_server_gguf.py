"""A GGUF file served with nothing beside it: a Qwen3 with its chat tokens and template,
converted by llama.cpp's own converter, answers /v1/chat/completions through the real `openai`
client with tools, and its prompt (/tokenize) is the one transformers renders from the
checkpoint the file came from."""

from __future__ import annotations

import httpx
import openai
import pytest
from server_helpers import make_engine, serve, wait_idle
from tool_specs import weather_tool

from nanovllm.server.app import build_app

MODEL = "tiny-qwen3-gguf"
TOOLS = [weather_tool({"enum": ["Paris", "Rome"]})]
ASK = [{"role": "system", "content": "You are terse."},
       {"role": "user", "content": "Weather in Paris?"}]


@pytest.fixture(scope="module")
def served(gguf_file):
    hf_dir, path = gguf_file("qwen3-chat")
    engine = make_engine(path, num_kv_blocks=256)
    srv = serve(build_app(engine, served_model_name=MODEL, tool_call_parser="hermes",
                                reasoning_parser="qwen3"), engine)
    yield hf_dir, srv
    srv.stop()
    wait_idle(engine)
    engine.shutdown()


def test_prompt_is_transformers_rendering_of_the_original(served):
    from transformers import AutoTokenizer

    hf_dir, srv = served
    want = AutoTokenizer.from_pretrained(hf_dir).apply_chat_template(
        ASK, tools=TOOLS, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    got = httpx.post(f"{srv.url}/tokenize", json={"messages": ASK, "tools": TOOLS}, timeout=60)
    assert got.json()["tokens"] == want


def test_chat_completion_through_the_openai_client(served):
    from transformers import AutoTokenizer

    hf_dir, srv = served
    client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0, timeout=120)
    reply = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required", seed=5,
        max_completion_tokens=80, extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    calls = reply.choices[0].message.tool_calls
    assert calls and calls[0].function.name == "get_weather"
    want = AutoTokenizer.from_pretrained(hf_dir).apply_chat_template(
        ASK, tools=TOOLS, add_generation_prompt=True, tokenize=True, return_dict=True,
        enable_thinking=False)["input_ids"]
    assert reply.usage.prompt_tokens == len(want)
    assert [m.id for m in client.models.list()] == [MODEL]
