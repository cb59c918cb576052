"""Structured outputs on a random-weight grouped-query Llama, through the real server and the
real `openai` client: the model alone writes noise, so every output that parses is the
constraint's doing (GPT-2's: test_server_structured.py). Its tokenizer is not GPT-2's (its
own BOS, two EOS ids, a chat template of its own), so the grammar's vocabulary and the chat
path are the Llama checkpoint's."""

from __future__ import annotations

import json
import re

import openai
import pytest
from server_helpers import make_engine, serve, wait_idle

from nanovllm.server.app import build_app

MODEL = "tiny-llama-gqa"
PERSON = {"type": "object", "additionalProperties": False,
          "required": ["name", "age", "colour"],
          "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 6},
                         "age": {"type": "integer", "minimum": 0, "maximum": 99},
                         "colour": {"enum": ["red", "green", "blue"]}}}


def check_person(text: str) -> None:
    obj = json.loads(text)
    assert set(obj) == {"name", "age", "colour"}, obj
    assert isinstance(obj["name"], str) and 1 <= len(obj["name"]) <= 6
    assert isinstance(obj["age"], int) and 0 <= obj["age"] <= 99
    assert obj["colour"] in {"red", "green", "blue"}


@pytest.fixture(scope="module")
def llama_server(llama_ckpt):
    model_dir = llama_ckpt("llama-gqa")
    loop = make_engine(model_dir, num_kv_blocks=256)
    srv = serve(build_app(loop, served_model_name=MODEL, model_root=str(model_dir)), loop)
    yield srv
    srv.stop()
    loop.shutdown()


@pytest.fixture
def client(llama_server):
    return openai.OpenAI(base_url=f"{llama_server.url}/v1", api_key="unused", max_retries=0,
                         timeout=120)


def test_json_schema_completions_always_parse(llama_server, client):
    resp = client.completions.create(
        model=MODEL, prompt="Data:", n=6, temperature=1.0, seed=5, max_tokens=120,
        extra_body={"structured_outputs": {"json": PERSON}})
    for choice in resp.choices:
        assert choice.finish_reason == "stop", choice.text
        check_person(choice.text)
    wait_idle(llama_server.engine)


def test_json_schema_via_chat_with_the_checkpoints_template(llama_server, client):
    resp = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Describe someone."}],
        temperature=1.0, seed=9, n=3, max_completion_tokens=120,
        response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON}})
    for choice in resp.choices:
        assert choice.finish_reason == "stop"
        check_person(choice.message.content)


def test_regex_and_choice_outputs_match(client):
    pattern = r"[a-z]{3}-[0-9]{2,4}"
    resp = client.completions.create(model=MODEL, prompt="Code:", n=6, temperature=1.0, seed=3,
                                     max_tokens=20, extra_body={"guided_regex": pattern})
    assert all(re.fullmatch(pattern, c.text) and c.finish_reason == "stop" for c in resp.choices)
    options = ["red", "green", "blue", "no colour at all"]
    resp = client.completions.create(model=MODEL, prompt="Colour:", n=12, temperature=1.0,
                                     seed=4, max_tokens=20, extra_body={"guided_choice": options})
    texts = {c.text for c in resp.choices}
    assert texts <= set(options) and len(texts) > 1
