"""Pythonic calls (Llama 3.2 and Llama 4 small models, ToolACE): the whole answer is a Python
list of calls with keyword arguments, `[get_weather(city="Paris"), get_time(zone="CET")]`,
optionally between `<|python_start|>` and `<|python_end|>`. Arguments are Python literals,
given back as JSON. A streamed call is announced once its name is written and its arguments
sent whole once its closing parenthesis is (a Python literal becomes JSON only then)."""

from __future__ import annotations

import ast
import json
import re

from nanovllm.server.chat.tool_calls.base import ToolParser
from nanovllm.server.chat.tool_calls.partial import Parsed, PartialCall, is_undecided_prefix

START, END = "<|python_start|>", "<|python_end|>"
_CALL_HEAD = re.compile(r"\s*([A-Za-z_][\w.]*)\s*\(")
_NAME_SO_FAR = re.compile(r"\s*[A-Za-z_][\w.]*\s*$")


class PythonicParser(ToolParser):
    name = "pythonic"
    keeps_special_tokens = True

    def parse(self, text: str, final: bool) -> Parsed:
        body = text.strip()
        if body.startswith(START):
            body = body[len(START):].strip()
        elif not final and is_undecided_prefix(text, START):
            return Parsed()
        body = body.removesuffix(END).rstrip()
        if not body and not final:
            return Parsed()
        if not body.startswith("["):
            return Parsed(text)
        if final:
            calls = _literal_calls(body)
            return Parsed("", calls) if calls else Parsed(text)
        return self._partial(text, body)

    @staticmethod
    def _partial(text: str, body: str) -> Parsed:
        """The calls of a list still being written: names as soon as the "(" follows them,
        arguments once the call closes. Text that cannot become a call list is content."""
        calls, pos = [], 1
        while True:
            head = _CALL_HEAD.match(body, pos)
            if head is None:
                rest = body[pos:].lstrip(", \n\t")
                if rest and not (rest.startswith("]") or _NAME_SO_FAR.fullmatch(rest)):
                    return Parsed(text) if not calls else Parsed("", calls)
                return Parsed("", calls)
            end = _call_end(body, head.end())
            if end is None:
                calls.append(PartialCall(head.group(1)))
                return Parsed("", calls)
            parsed = _literal_calls(f"[{body[head.start():end]}]")
            calls.append(parsed[0] if parsed else PartialCall(head.group(1)))
            pos = end


def _call_end(text: str, i: int) -> int | None:
    """After the ")" that closes the call whose arguments start at text[i], or None."""
    depth, quote = 1, None
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\":
                i += 1
            elif text.startswith(quote, i):
                i += len(quote) - 1
                quote = None
        elif c in "\"'":
            quote = c * 3 if text.startswith(c * 3, i) else c
            i += len(quote) - 1
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return None


def _literal_calls(source: str) -> list[PartialCall]:
    """The calls of a complete `[f(a=1), ...]`, or [] if it is not exactly that."""
    try:
        tree = ast.parse(source, mode="eval").body
    except (SyntaxError, ValueError, RecursionError):
        return []
    if not isinstance(tree, ast.List) or not tree.elts:
        return []
    calls = []
    for node in tree.elts:
        if not isinstance(node, ast.Call) or node.args or not _is_name(node.func):
            return []
        try:
            args = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords}
            if None in args:  # **kwargs
                return []
            text = json.dumps(args, ensure_ascii=False)
        except (ValueError, TypeError, SyntaxError, RecursionError):
            return []
        calls.append(PartialCall(ast.unparse(node.func), text, True))
    return calls


def _is_name(node: ast.expr) -> bool:
    return isinstance(node, ast.Name) or isinstance(node, ast.Attribute) and _is_name(node.value)
