"""Tool calling on the chat path, in pieces its plan (plan.py) and its reading of the answer
(output.py) compose:

- request.py: the `tools`, `tool_choice` and `parallel_tool_calls` fields checked, and the
  conversation's calls and tool results made ready for the chat template;
- constraint.py: `tool_choice` "required" or a named function as a grammar the engine enforces,
  and the parser that reads that constrained output back;
- the parsers, one per model family (PARSERS), each reading calls out of the text a model
  wrote under `"auto"`: `extract` a finished text, or stream it with a ToolCallStreamer.
"""

from __future__ import annotations

from nanovllm.server.chat.tool_calls.base import ToolCallStreamer, ToolParser, extract
from nanovllm.server.chat.tool_calls.hermes import HermesParser
from nanovllm.server.chat.tool_calls.llama3_json import Llama3JsonParser
from nanovllm.server.chat.tool_calls.mistral import MistralParser
from nanovllm.server.chat.tool_calls.pythonic import PythonicParser

PARSERS: dict[str, type[ToolParser]] = {
    p.name: p for p in (HermesParser, Llama3JsonParser, MistralParser, PythonicParser)}

__all__ = ["PARSERS", "ToolCallStreamer", "ToolParser", "extract"]
