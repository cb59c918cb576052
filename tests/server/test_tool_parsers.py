"""The tool-call parsers on each family's real output format: the calls a finished text holds,
and the same calls (and content) from a stream of the text cut at every position, as a strict
client reassembles OpenAI's deltas. No partial tag ever reaches the content."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nanovllm.server.chat.tool_calls import PARSERS, ToolCallStreamer, extract

WEATHER = {"city": "Paris", "unit": "celsius"}
# (parser, text as the family writes it, expected content, expected [(name, arguments)])
CASES = [
    ("hermes", 'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": '
               '{"city": "Paris", "unit": "celsius"}}\n</tool_call>',
     "Let me check.", [("get_weather", WEATHER)]),
    ("hermes", '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": '
               '"celsius"}}\n</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": '
               '{"zone": "CET"}}\n</tool_call>',
     None, [("get_weather", WEATHER), ("get_time", {"zone": "CET"})]),
    ("hermes", '<tool_call>\n{"name": "ping", "arguments": {}}', None, [("ping", {})]),
    ("hermes", '<tool_call>\n{"name": "say", "arguments": {"s": "</tool_call> }"}}\n</tool_call>',
     None, [("say", {"s": "</tool_call> }"})]),
    ("hermes", 'x < y and <tool yes', 'x < y and <tool yes', []),
    ("llama3_json", '{"name": "get_weather", "parameters": {"city": "Paris", "unit": '
                    '"celsius"}}', None, [("get_weather", WEATHER)]),
    ("llama3_json", '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris", '
                    '"unit": "celsius"}}; {"name": "get_time", "parameters": {"zone": "CET"}}',
     None, [("get_weather", WEATHER), ("get_time", {"zone": "CET"})]),
    ("llama3_json", 'The answer is {"a": 1}.', 'The answer is {"a": 1}.', []),
    ("mistral", 'Sure.[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris", '
                '"unit": "celsius"}}, {"name": "get_time", "arguments": {"zone": "CET"}}]',
     "Sure.", [("get_weather", WEATHER), ("get_time", {"zone": "CET"})]),
    ("mistral", '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris", "unit": "celsius"}'
                '[TOOL_CALLS]get_time[ARGS]{"zone": "CET"}',
     None, [("get_weather", WEATHER), ("get_time", {"zone": "CET"})]),
    ("mistral", 'Plain [TOOL answer', 'Plain [TOOL answer', []),
    ("mistral", 'Checking. [TOOL_CALLS] [ {"name": "get_time", "arguments": {"zone": "CET"}} ]',
     "Checking.", [("get_time", {"zone": "CET"})]),
    ("pythonic", '[get_weather(city="Paris", unit="celsius"), get_time(zone=\'CET\')]',
     None, [("get_weather", WEATHER), ("get_time", {"zone": "CET"})]),
    ("pythonic", '<|python_start|>[get_weather(city="Paris", unit="celsius")]<|python_end|>',
     None, [("get_weather", WEATHER)]),
    ("pythonic", '[get_weather(city="San Francisco", metric="celsius"), search(query="a, b)", '
                 'filters={"tags": ["x", "y"], "limit": 3, "exact": True, "since": None})]',
     None, [("get_weather", {"city": "San Francisco", "metric": "celsius"}),
            ("search", {"query": "a, b)", "filters": {"tags": ["x", "y"], "limit": 3,
                                                      "exact": True, "since": None}})]),
    ("pythonic", '[1, 2, 3] are numbers', '[1, 2, 3] are numbers', []),
    ("pythonic", 'Call f(x) later.', 'Call f(x) later.', []),
]
IDS = [f"{p}-{i}" for i, (p, *_) in enumerate(CASES)]
# A call that turns out malformed: the text is content (a stream has already announced it).
BROKEN = [("hermes", '<tool_call>\n{"name": "f", "arguments": {"a": 1}\n</tool_call>'),
          ("hermes", '<tool_call>\n{"name": 7, "arguments": {}}\n</tool_call>'),
          ("llama3_json", '{"name": "f", "parameters": [1]}'),
          ("mistral", '[TOOL_CALLS]f[ARGS]{"a": }'),
          ("hermes", '<tool_call>\n{"na\\qme": "f", "arguments": {}}\n</tool_call>'),
          ("hermes", '<tool_call>\n{"name": "f" "arguments": {}}\n</tool_call>'),
          ("llama3_json", '{, "name": "f", "parameters": {}}'),
          ("pythonic", '[f(a=open("x"))]')]


def calls_of(calls) -> list[tuple[str, dict]]:
    return [(c.name, json.loads(c.arguments)) for c in calls]


@pytest.mark.parametrize(("parser", "text", "content", "calls"), CASES, ids=IDS)
def test_extract(parser, text, content, calls):
    got_content, got_calls = extract(PARSERS[parser](), text)
    assert got_content == content
    assert calls_of(got_calls) == calls


@pytest.mark.parametrize(("parser", "text"), BROKEN)
def test_a_malformed_call_is_content(parser, text):
    assert extract(PARSERS[parser](), text) == (text, [])


def stream(parser, pieces: list[str], expected: str | None) -> tuple[str, list[dict]]:
    """The content and calls a strict client assembles from the deltas of these pieces."""
    streamer = ToolCallStreamer(PARSERS[parser]())
    content, calls, text = "", [], ""
    for i, piece in enumerate(pieces):
        text += piece
        new, deltas = streamer.update(text, final=i == len(pieces) - 1)
        content += new
        for d in deltas:
            if d.index == len(calls):  # a call's first delta: index, id and name
                assert d.id and d.name
                calls.append({"id": d.id, "name": d.name, "arguments": ""})
            else:
                assert d.index == len(calls) - 1 and d.id is None and d.name is None
            calls[d.index]["arguments"] += d.arguments
        # What was sent is never taken back: no tag, nor a part of one, is ever content.
        assert (expected or "").startswith(content), (content, expected)
    return content, calls


@pytest.mark.parametrize(("parser", "text", "content", "calls"), CASES, ids=IDS)
def test_stream_split_at_every_position(parser, text, content, calls):
    for cut in range(len(text) + 1):
        got_content, got_calls = stream(parser, [text[:cut], text[cut:]], content)
        assert (got_content or None) == content, cut
        assert [(c["name"], json.loads(c["arguments"])) for c in got_calls] == calls, cut


@pytest.mark.parametrize(("parser", "text", "content", "calls"), CASES, ids=IDS)
def test_stream_one_character_at_a_time(parser, text, content, calls):
    got_content, got_calls = stream(parser, list(text) or [""], content)
    assert (got_content or None) == content
    assert [(c["name"], json.loads(c["arguments"])) for c in got_calls] == calls
    if calls and parser != "pythonic":  # arguments arrive in several fragments
        assert got_calls[0]["arguments"] == extract(PARSERS[parser](), text)[1][0].arguments


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_stream_any_split(data):
    parser, text, content, calls = data.draw(st.sampled_from(CASES))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=8)))
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    got_content, got_calls = stream(parser, pieces, content)
    assert (got_content or None) == content
    assert [(c["name"], json.loads(c["arguments"])) for c in got_calls] == calls


def test_no_partial_tag_is_sent_as_content():
    streamer = ToolCallStreamer(PARSERS["hermes"]())
    text, sent = "", ""
    for piece in ["Hi", " <", "tool", "_", "call", ">", '\n{"name": "f", "arguments": {}}']:
        text += piece
        sent += streamer.update(text, final=False)[0]
        assert "<" not in sent
    assert sent == "Hi"


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                 max_size=3), max_leaves=8)
WRITERS = {  # how each family writes one call with these arguments
    "hermes": lambda name, args: f'<tool_call>\n{{"name": "{name}", "arguments": {args}}}\n'
                                 "</tool_call>",
    "llama3_json": lambda name, args: f'{{"name": "{name}", "parameters": {args}}}',
    "mistral": lambda name, args: f'[TOOL_CALLS][{{"name": "{name}", "arguments": {args}}}]',
}


@settings(max_examples=150, deadline=None)
@given(data=st.data(), parser=st.sampled_from(sorted(WRITERS)),
       args=st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=4),
       ensure_ascii=st.booleans())
def test_any_arguments_survive_any_split(data, parser, args, ensure_ascii):
    """Strings holding braces, quotes, escapes, tags or any Unicode: the arguments come back
    exactly as written, whole and streamed."""
    written = json.dumps(args, ensure_ascii=ensure_ascii)
    text = WRITERS[parser]("f", written)
    [call] = extract(PARSERS[parser](), text)[1]
    assert call.arguments == written
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=6)))
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    content, calls = stream(parser, pieces, None)
    assert content == "" and [(c["name"], c["arguments"]) for c in calls] == [("f", written)]


PIECES = st.sampled_from(['<tool_call>', '</tool_call>', '[TOOL_CALLS]', '[ARGS]', '<|python_tag|>',
                          '{', '}', '[', ']', '(', ')', '"', '\\', ',', ';', ':', '=', ' ', '\n',
                          '"name"', '"arguments"', '"parameters"', 'f', '1', 'null', "'"])


@settings(max_examples=300, deadline=None)
@given(data=st.data(), parser=st.sampled_from(sorted(PARSERS)),
       text=st.lists(PIECES, max_size=30).map("".join))
def test_any_text_is_read_without_error(data, parser, text):
    """Whatever a model writes, every parser answers: calls that are JSON objects, or content."""
    content, calls = extract(PARSERS[parser](), text)
    assert all(isinstance(json.loads(c.arguments), dict) for c in calls)
    assert calls or content == text
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=4)))
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    streamer = ToolCallStreamer(PARSERS[parser]())
    so_far = ""
    for i, piece in enumerate(pieces):
        so_far += piece
        streamer.update(so_far, final=i == len(pieces) - 1)
