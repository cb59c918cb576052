"""The reasoning parsers, alone and in front of a tool parser (chat_output's composition):
a finished text's message, and the same message from a stream of the text cut at every
position, reasoning and content only ever growing (no tag, nor a part of one, is ever sent)."""

from __future__ import annotations

import json

import pytest

from nanovllm.server.chat.output import MessageStream, OutputRules, parse_message
from nanovllm.server.chat.reasoning import REASONING_PARSERS
from nanovllm.server.chat.tool_calls import PARSERS

CALL = '<tool_call>\n{"name": "f", "arguments": {"x": 1}}\n</tool_call>'
# (parser, what the prompt left open, text, reasoning, content, calls)
CASES = [
    ("qwen3", None, "<think>\nHmm.\n</think>\n\nParis.", "\nHmm.\n", "Paris.", []),
    ("qwen3", None, "Paris, no thinking.", None, "Paris, no thinking.", []),
    ("qwen3", False, "<think>is content here</think>", None, "<think>is content here</think>", []),
    ("qwen3", None, "<think>\ncut off", "\ncut off", None, []),
    ("deepseek_r1", None, "Hmm, so.\n</think>\n\nParis.", "Hmm, so.\n", "Paris.", []),
    ("deepseek_r1", None, "<think>Hmm.</think>Paris.", "Hmm.", "Paris.", []),
    ("deepseek_r1", None, "never closed", "never closed", None, []),
    ("deepseek_r1", True, "Hmm.</think>" + CALL, "Hmm.", None, [("f", {"x": 1})]),
    ("qwen3", None, "<think>Call.</think>\n\nSure.\n" + CALL, "Call.", "Sure.", [("f", {"x": 1})]),
]


def rules(parser, opened, text) -> OutputRules:
    return OutputRules(REASONING_PARSERS[parser], opened,
                       PARSERS["hermes"]() if "<tool_call>" in text else None)


@pytest.mark.parametrize(("parser", "opened", "text", "reasoning", "content", "calls"), CASES)
def test_message(parser, opened, text, reasoning, content, calls):
    msg = parse_message(rules(parser, opened, text), text)
    assert (msg.reasoning_content, msg.content) == (reasoning, content)
    assert [(c.name, json.loads(c.arguments)) for c in msg.tool_calls] == calls


@pytest.mark.parametrize(("parser", "opened", "text", "reasoning", "content", "calls"), CASES)
def test_stream_split_at_every_position(parser, opened, text, reasoning, content, calls):
    for cut in range(len(text) + 1):
        stream = MessageStream(rules(parser, opened, text))
        got = {"reasoning_content": "", "content": ""}
        got_calls = []
        for piece, final in ((text[:cut], False), (text, True)):
            delta = stream.update(piece, final)
            for key in got:
                got[key] += getattr(delta, key)
            for tc in delta.tool_calls:
                if tc.index == len(got_calls):
                    got_calls.append([tc.name, ""])
                got_calls[tc.index][1] += tc.arguments
            assert (reasoning or "").startswith(got["reasoning_content"]), cut
            assert (content or "").startswith(got["content"]), cut
        assert (got["reasoning_content"] or None, got["content"] or None) == (reasoning, content)
        assert [(n, json.loads(a)) for n, a in got_calls] == calls


@pytest.mark.parametrize(("generation_prompt", "opened"), [
    ("<|im_start|>assistant\n", None),
    ("<|im_start|>assistant\n<think>\n", True),
    ("<|im_start|>assistant\n<think>\n\n</think>\n\n", False),
])
def test_the_generation_prompt_says_where_the_output_starts(generation_prompt, opened):
    assert REASONING_PARSERS["qwen3"].opened_by(generation_prompt) is opened
