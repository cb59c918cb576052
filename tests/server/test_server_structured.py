"""Structured outputs on the random-weight checkpoint: the model alone would write noise, so
every output that parses or matches is the constraint's doing."""

from __future__ import annotations

import json
import re
import sys

import numpy as np
import pytest
from server_helpers import MODEL, error_of, wait_idle

from nanovllm import InvalidRequestError
from nanovllm.runner.structured import apply_token_bitmask_
from nanovllm.structured import GrammarCompiler

PERSON = {"type": "object", "additionalProperties": False,
          "required": ["name", "age", "ok", "colour"],
          "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 6},
                         "age": {"type": "integer", "minimum": 0, "maximum": 99},
                         "ok": {"type": "boolean"},
                         "colour": {"enum": ["red", "green", "blue"]}}}


def check_person(text: str) -> None:
    obj = json.loads(text)
    assert set(obj) == {"name", "age", "ok", "colour"}, obj
    assert isinstance(obj["name"], str) and 1 <= len(obj["name"]) <= 6
    assert isinstance(obj["age"], int) and 0 <= obj["age"] <= 99
    assert isinstance(obj["ok"], bool) and obj["colour"] in {"red", "green", "blue"}


def sampled(client, n=6, max_tokens=120, **extra):
    return client.completions.create(model=MODEL, prompt="Data:", n=n, temperature=1.0, seed=5,
                                     max_tokens=max_tokens, extra_body=extra).choices


@pytest.mark.parametrize("extra", [
    {"guided_json": PERSON},
    {"structured_outputs": {"json": PERSON}},
    {"response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON}}},
], ids=["guided_json", "structured_outputs", "response_format"])
def test_json_schema_outputs_always_parse(client, extra):
    for choice in sampled(client, **extra):
        assert choice.finish_reason == "stop"
        check_person(choice.text)


def test_regex_outputs_always_match(client):
    pattern = r"[a-z]{3}-[0-9]{2,4}"
    for choice in sampled(client, guided_regex=pattern):
        assert re.fullmatch(pattern, choice.text) and choice.finish_reason == "stop"


def test_choice_outputs_are_one_of_the_choices(client):
    options = ["red", "green", "blue", "no colour at all"]
    texts = {c.text for c in sampled(client, n=12, guided_choice=options)}
    assert texts <= set(options) and len(texts) > 1


@pytest.mark.parametrize("grammar", [
    'start: "(" DIGIT ("+" DIGIT)~1..3 ")"\nDIGIT: /[0-9]/',  # Lark
    'root ::= "(" [0-9] ("+" [0-9]) ("+" [0-9])? ")"',  # GBNF, as llama.cpp writes it
], ids=["lark", "gbnf"])
def test_grammar_outputs_match(client, grammar):
    for choice in sampled(client, guided_grammar=grammar):
        assert re.fullmatch(r"\([0-9](\+[0-9]){1,3}\)", choice.text), choice.text


def test_streamed_json_schema_via_chat(chat_client):
    chunks = list(chat_client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Describe someone."}], stream=True,
        temperature=1.0, seed=9, n=3, max_completion_tokens=120,
        response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON}}))
    texts = ["", "", ""]
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
    for text in texts:
        check_person(text)


def test_json_object_via_chat(chat_client):
    """Any JSON object: on random weights most samples ramble inside a string until the token
    budget ends them, but every sample the grammar let finish is a JSON object."""
    resp = chat_client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "JSON please"}], temperature=1.0,
        seed=5, n=8, max_completion_tokens=100, response_format={"type": "json_object"})
    finished = [c.message.content for c in resp.choices if c.finish_reason == "stop"]
    assert finished
    assert all(isinstance(json.loads(text), dict) for text in finished)
    assert all(c.message.content.startswith("{") for c in resp.choices)


@pytest.mark.parametrize("body,param", [
    ({"guided_json": {"type": "nope"}}, "guided_json"),
    ({"guided_json": "{not json"}, "guided_json"),
    ({"guided_regex": "(unclosed"}, "guided_regex"),
    ({"guided_grammar": "start: undefined_rule"}, "guided_grammar"),
    ({"guided_choice": []}, "guided_choice"),
    ({"guided_choice": ["a", 3]}, "guided_choice"),
    ({"guided_regex": "a" * 64_001}, "guided_regex"),
    ({"structured_outputs": {"regex": "("}}, "structured_outputs"),
    ({"structured_outputs": {"structural_tag": "x"}}, "structured_outputs"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format"),
    ({"response_format": {"type": "yaml"}}, "response_format"),
    ({"guided_regex": "a", "guided_choice": ["a"]}, "guided_regex"),
    ({"guided_regex": "a", "ignore_eos": True}, "ignore_eos"),
    ({"guided_regex": "a", "min_tokens": 2}, "min_tokens"),
])
def test_malformed_constraints_are_400s_before_the_engine(http, live, body, param):
    err = error_of(http.post("/v1/completions", json={"prompt": "x", **body}), 400)
    assert err["param"] == param, err
    wait_idle(live.engine)


def test_without_llguidance_the_request_says_what_to_install(engine, monkeypatch):
    monkeypatch.setitem(sys.modules, "llguidance", None)  # what an absent package looks like
    with pytest.raises(InvalidRequestError, match=r"pip install 'nanovllm\[structured\]'"):
        GrammarCompiler(engine.tokenizer).compile("regex", "a+", "guided_regex")


def test_apply_token_bitmask():
    logits = np.zeros(70, np.float32)
    mask = np.zeros(2, np.int32)
    mask[0] = np.uint32((1 << 3) | (1 << 31)).view(np.int32)
    mask[1] = 1 << 1  # token 33
    apply_token_bitmask_(logits, mask)
    assert np.flatnonzero(np.isfinite(logits)).tolist() == [3, 31, 33]  # 64..69: past the mask
