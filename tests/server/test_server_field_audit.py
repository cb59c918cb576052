"""Every field the request models accept is honoured or documented (issue 29): the test walks
the models' fields and, for each one not in protocol.NO_OUTPUT_EFFECT, sends the same seeded
request with and without it through the real server and asserts that the response changed.
A new field with neither a probe here nor a documented reason fails the walk. Unknown fields
are refused, except the documented IGNORED_EXTRA_FIELDS."""

from __future__ import annotations

import json

import pytest
from server_helpers import error_of

from nanovllm.server.api.completions.protocol import CompletionRequest
from nanovllm.server.api.tokenize.protocol import DetokenizeRequest, TokenizeRequest
from nanovllm.server.chat.request import ChatCompletionRequest
from nanovllm.server.protocol import IGNORED_EXTRA_FIELDS, NO_OUTPUT_EFFECT

EOS = "EOS"  # stands for the checkpoint's EOS id (a logit_bias key) until check_effects
SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
BASE = {"temperature": 1.0, "seed": 7, "max_tokens": 6, "n": 1}

# field -> (what the request already holds, the field's probe value); the same request without
# the field must answer differently.
SAMPLING_PROBES = {
    "structured_outputs": ({}, {"regex": "[ab]{3}"}),
    "guided_json": ({}, SCHEMA),
    "guided_regex": ({}, "[ab]{3}"),
    "guided_choice": ({}, ["yes", "no"]),
    "guided_grammar": ({}, 'start: "x" "y"'),
    "response_format": ({}, {"type": "json_object"}),
    "frequency_penalty": ({"ignore_eos": True, "max_tokens": 30}, 2.0),
    "presence_penalty": ({"ignore_eos": True, "max_tokens": 30}, 2.0),
    "repetition_penalty": ({"ignore_eos": True, "max_tokens": 30}, 5.0),
    "logit_bias": ({}, {"77": 100}),
    "max_completion_tokens": ({"ignore_eos": True}, 2),
    "n": ({}, 2),
    "seed": ({}, 8),
    "stop": ({"ignore_eos": True, "max_tokens": 20, "logit_bias": {"77": 5}}, None),  # from text
    "stream": ({}, True),
    "stream_options": ({"stream": True}, {"include_usage": True}),
    "temperature": ({}, 0.0),
    "top_p": ({"ignore_eos": True, "max_tokens": 20}, 0.05),
    "top_k": ({"ignore_eos": True, "max_tokens": 20}, 1),
    "min_p": ({"ignore_eos": True, "max_tokens": 20}, 0.9),
    "ignore_eos": ({"logit_bias": {str(EOS): 100}}, True),
    "min_tokens": ({"logit_bias": {str(EOS): 100}}, 3),
    "stop_token_ids": ({"logit_bias": {"77": 100}}, [77]),
    "include_stop_str_in_output": ({"logit_bias": {"77": 100}, "stop_token_ids": [77]}, True),
    "skip_special_tokens": ({"logit_bias": {str(EOS): 100}, "ignore_eos": True}, False),
    "return_token_ids": ({}, True),
    "allowed_token_ids": ({}, [77, 78]),
    "truncate_prompt_tokens": ({}, 1),
    "truncation_side": ({"truncate_prompt_tokens": 1}, "right"),
}
COMPLETION_PROBES = {
    **SAMPLING_PROBES,
    "prompt": ({}, "another prompt"),
    "echo": ({}, True),
    "logprobs": ({}, 2),
    "max_tokens": ({"ignore_eos": True}, 2),
    "prompt_logprobs": ({}, 1),
    "return_tokens_as_token_ids": ({"logprobs": 1}, True),
    "use_beam_search": ({}, True),
    # Beams over a prompt of EOS end on EOS at once; a negative penalty ranks that one first.
    "length_penalty": ({"use_beam_search": True, "n": 2,
                        "prompt": ["EOS_ID", "EOS_ID", "EOS_ID"]}, -2.0),
}
CHAT_PROBES = {
    **SAMPLING_PROBES,
    "messages": ({}, [{"role": "user", "content": "something else"}]),
    "logprobs": ({}, True),
    "top_logprobs": ({"logprobs": True}, 3),
    "max_tokens": ({"ignore_eos": True}, 2),
    "add_generation_prompt": ({}, False),
    "continue_final_message": ({"add_generation_prompt": False}, True),
    "echo": ({"add_generation_prompt": False, "continue_final_message": True}, True),
    "prompt_logprobs": ({}, 1),
    "return_tokens_as_token_ids": ({"logprobs": True, "top_logprobs": 1}, True),
}
TOKENIZE_PROBES = {"prompt": ({}, "other words"), "return_token_strs": ({}, True),
                   "messages": ({"prompt": None}, [{"role": "user", "content": "hi"}]),
                   "add_generation_prompt": ({"prompt": None, "messages": [
                       {"role": "user", "content": "hi"}]}, False),
                   "continue_final_message": ({"prompt": None, "add_generation_prompt": False,
                                               "messages": [{"role": "user", "content": "hi"}]},
                                              True)}
DETOKENIZE_PROBES = {"tokens": ({}, [5, 6, 7])}
# Fields whose effect needs a chat template that reads them (the GPT-2 example's does not): the
# test that shows it, on a checkpoint whose template lists tools.
TOOLS_TEST = "test_server_tools.py::"
PROBED_WITH_A_TOOL_TEMPLATE = {
    "tools": TOOLS_TEST + "test_tokenize_and_chat_render_tools_as_transformers_does",
    "chat_template_kwargs": TOOLS_TEST + "test_chat_template_kwargs_reach_the_template",
    "tool_choice": TOOLS_TEST + "test_tool_choice_none_leaves_the_text_alone",
    "parallel_tool_calls": TOOLS_TEST + "test_parallel_tool_calls_false_is_one_call",
    # (and a reasoning parser, which Qwen3's template and tags have)
    "thinking_token_budget": "test_server_agent_fields.py::"
                             "test_a_chat_thinking_budget_closes_the_reasoning",
}


def test_the_tool_template_probes_exist():
    from pathlib import Path

    for probe in PROBED_WITH_A_TOOL_TEMPLATE.values():
        file, test = probe.split("::")
        assert f"def {test}(" in (Path(__file__).parent / file).read_text(), probe


def answer(http, path: str, body: dict, must_succeed: bool = True):
    """The response without what differs between any two calls (ids, times)."""
    body = {k: v for k, v in body.items() if v is not None}
    if body.get("stream"):
        with http.stream("POST", path, json=body) as r:
            assert r.status_code == 200, r.read()
            events = [e for e in r.read().decode().split("\n\n") if e]
        chunks = [json.loads(e[6:]) for e in events[:-1]]
        return [{k: v for k, v in c.items() if k not in ("id", "created")} for c in chunks]
    r = http.post(path, json=body)
    if not must_succeed and r.status_code != 200:
        return r.status_code
    assert r.status_code == 200, r.text
    return {k: v for k, v in r.json().items() if k not in ("id", "created")}


def check_effects(http, path: str, model, probes: dict, base: dict, eos: int = 0) -> None:
    fields = set(model.model_fields) - set(PROBED_WITH_A_TOOL_TEMPLATE)
    assert fields == set(probes) | (fields & set(NO_OUTPUT_EFFECT)), (
        f"{model.__name__}: fields with neither a probe nor a documented reason: "
        f"{sorted(fields - set(probes) - set(NO_OUTPUT_EFFECT))}")
    for field, (context, value) in probes.items():
        body = json.loads(json.dumps({**base, **context}).replace('"EOS"', f'"{eos}"')
                          .replace('"EOS_ID"', str(eos)))
        if field == "stop":  # a piece of what the request writes without it
            choice = answer(http, path, body)["choices"][0]
            text = choice["text"] if "text" in choice else choice["message"]["content"]
            value = text[2:4]
            assert value, text
        # The probe must be accepted; the request without it may be refused (tokenize's forms).
        without = answer(http, path, body, must_succeed=False)
        with_it = answer(http, path, {**body, field: value})
        assert without != with_it, f"{model.__name__}.{field}={value!r} changed nothing"


def test_every_completions_field_has_an_effect_or_a_reason(http, engine):
    check_effects(http, "/v1/completions", CompletionRequest, COMPLETION_PROBES,
                  {**BASE, "prompt": "The audit"}, engine.tokenizer.eos_token_id)


def test_every_chat_field_has_an_effect_or_a_reason(chat_http, engine):
    base = {**BASE, "messages": [{"role": "user", "content": "Audit"},
                                 {"role": "assistant", "content": "Sure"}]}
    check_effects(chat_http, "/v1/chat/completions", ChatCompletionRequest, CHAT_PROBES, base,
                  engine.tokenizer.eos_token_id)


def test_every_tokenize_field_has_an_effect_or_a_reason(chat_http):
    check_effects(chat_http, "/tokenize", TokenizeRequest, TOKENIZE_PROBES, {"prompt": "a b"})
    check_effects(chat_http, "/detokenize", DetokenizeRequest, DETOKENIZE_PROBES,
                  {"tokens": [1, 2]})


@pytest.mark.parametrize("field", ["logprob_token_ids", "min_characters",
                                   "prompt_logprobs_temperature", "reasoning_effort", "suffixx"])
def test_unknown_fields_are_refused_naming_them(http, chat_http, field):
    err = error_of(http.post("/v1/completions", json={"prompt": "x", field: 3}), 400)
    assert err["param"] == field and field in err["message"]
    err = error_of(chat_http.post("/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "x"}], field: [1]}), 400)
    assert err["param"] == field


def test_documented_extra_fields_and_falsy_unknown_ones_pass(http):
    body = {"prompt": "x", "max_tokens": 1, **{k: "v" for k in IGNORED_EXTRA_FIELDS},
            "min_characters": 0, "logprob_token_ids": None}
    assert http.post("/v1/completions", json=body).status_code == 200
