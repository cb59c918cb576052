"""Mistral: text, then `[TOOL_CALLS]` and the calls, either as a JSON list
(`[TOOL_CALLS][{"name": "f", "arguments": {...}}, ...]`, v0.3 tokenizers) or as
`[TOOL_CALLS]f[ARGS]{...}` per call (v11 and later). `[TOOL_CALLS]` is a special token, so
decoding keeps special tokens for this parser. Call ids are 9 letters and digits, the only
form Mistral's chat templates accept back."""

from __future__ import annotations

from nanovllm.server.chat.tool_calls.base import ToolParser
from nanovllm.server.chat.tool_calls.partial import (
    Parsed,
    PartialCall,
    calls_in_json_list,
    held_back,
    is_object,
    random_alnum,
    skip_ws,
    value_end,
)

TOOL_CALLS, ARGS = "[TOOL_CALLS]", "[ARGS]"


class MistralParser(ToolParser):
    name = "mistral"
    keeps_special_tokens = True

    def new_id(self) -> str:
        return random_alnum(9)

    def parse(self, text: str, final: bool) -> Parsed:
        start = text.find(TOOL_CALLS)
        if start < 0:
            return Parsed(text if final else text[:len(text) - held_back(text, (TOOL_CALLS,))])
        out = Parsed(text[:start])
        pos = skip_ws(text, start + len(TOOL_CALLS))
        if text.startswith("[", pos):
            ok = calls_in_json_list(text, pos + 1, final, out)
        else:
            ok = self._named_args(text, start, final, out)
        return out if ok or not final else Parsed(text)

    @staticmethod
    def _named_args(text: str, pos: int, final: bool, out: Parsed) -> bool:
        """`[TOOL_CALLS]name[ARGS]{...}`, repeated."""
        while text.startswith(TOOL_CALLS, pos):
            name_start = pos + len(TOOL_CALLS)
            args_tag = text.find(ARGS, name_start)
            if args_tag < 0:
                return not final
            name = text[name_start:args_tag].strip()
            if not name:
                return False
            args = skip_ws(text, args_tag + len(ARGS))
            end = value_end(text, args) if text.startswith("{", args) else None
            if end is None:
                if final or (args < len(text) and text[args] != "{"):
                    return False
                out.calls.append(PartialCall(name, text[args:]))
                return True
            if not is_object(text[args:end]):
                return False
            out.calls.append(PartialCall(name, text[args:end], True))
            pos = skip_ws(text, end)
        rest = text[pos:]
        out.content += rest if final else rest[:len(rest) - held_back(rest, (TOOL_CALLS,))]
        return True
