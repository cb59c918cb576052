"""What every tool-call parser shares: the partial call types, a scanner that reads a JSON value that is
still being written, and the hold-back of a tag cut off at the end of the text.

A parser reads the whole text generated so far, `final` or not, into a `Parsed`: the content
decided so far and the calls begun so far. Everything a non-final parse reports only ever grows
as text arrives (the content is a prefix of the next parse's content, a call's arguments a
prefix of its next arguments), which is what lets the streamer send differences. Parsers work on
text, never on token ids, so a tag the tokenizer splits into several tokens (GPT-2's `<`, `tool`,
`_call`, `>`) is read like one that is a single token.
"""

from __future__ import annotations

import json
import secrets
import string
from dataclasses import dataclass, field


@dataclass(slots=True)
class PartialCall:
    name: str | None  # None until the name is complete
    arguments: str = ""  # JSON text of an object, or a prefix of it while it is being written
    complete: bool = False


@dataclass(slots=True)
class Parsed:
    content: str = ""  # the text that is the answer (outside any call), decided so far
    calls: list[PartialCall] = field(default_factory=list)


def openai_call_id() -> str:
    """OpenAI's form: "call_" and 24 letters and digits."""
    return "call_" + random_alnum(24)


def random_alnum(n: int) -> str:
    return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(n))


def held_back(text: str, tags: tuple[str, ...]) -> int:
    """How many characters at the end of `text` could be the start of one of `tags` (so they
    cannot be called content yet)."""
    longest = 0
    for tag in tags:
        for n in range(min(len(tag) - 1, len(text)), longest, -1):
            if tag.startswith(text[-n:]):
                longest = n
                break
    return longest


def is_undecided_prefix(text: str, tag: str) -> bool:
    """`text` (leading blanks aside) is a proper prefix of `tag`: it may still become it."""
    stripped = text.lstrip()
    return len(stripped) < len(tag) and tag.startswith(stripped)


# ---- a JSON value being written ------------------------------------------------------------


def skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    return i


def value_end(text: str, i: int) -> int | None:
    """The end (exclusive) of the JSON value starting at text[i], or None if it is not complete
    yet. Only its extent is found here; json.loads judges it when it is complete."""
    if i >= len(text):
        return None
    c = text[i]
    if c == '"':
        return _string_end(text, i)
    if c in "{[":
        depth, j = 0, i
        while j < len(text):
            ch = text[j]
            if ch == '"':
                end = _string_end(text, j)
                if end is None:
                    return None
                j = end
                continue
            if ch in "{[":
                depth += 1
            elif ch in "}]":
                depth -= 1
                if depth == 0:
                    return j + 1
            j += 1
        return None
    j = i  # a number, true, false or null: complete once something else follows it
    while j < len(text) and text[j] not in ",}] \t\r\n":
        j += 1
    return j if j < len(text) else None


def _string_end(text: str, i: int) -> int | None:
    j = i + 1
    while j < len(text):
        if text[j] == "\\":
            j += 2
            continue
        if text[j] == '"':
            return j + 1
        j += 1
    return None


@dataclass(slots=True)
class ObjectScan:
    """The members of a JSON object read so far: key -> (value start, value end or None)."""
    members: dict[str, tuple[int, int | None]]
    end: int | None  # after the closing brace, once complete
    broken: bool = False  # not an object at all (a parse error, not just an unfinished one)
    start: int = 0  # its opening brace


def scan_object(text: str, i: int) -> ObjectScan:
    """Reads the object starting at text[i] ("{") as far as it is written."""
    members: dict[str, tuple[int, int | None]] = {}
    j = skip_ws(text, i + 1)
    while j < len(text):
        if text[j] == "}":
            return ObjectScan(members, j + 1, start=i)
        if text[j] == ",":
            j = skip_ws(text, j + 1)
            continue
        if text[j] != '"':
            return ObjectScan(members, None, broken=True)
        key_end = _string_end(text, j)
        if key_end is None:
            break
        key = _loads(text[j:key_end])
        if key is _BAD:  # an invalid escape
            return ObjectScan(members, None, broken=True)
        j = skip_ws(text, key_end)
        if j >= len(text):
            break
        if text[j] != ":":
            return ObjectScan(members, None, broken=True)
        start = skip_ws(text, j + 1)
        if start >= len(text):
            break
        end = value_end(text, start)
        members[key] = (start, end)
        if end is None:
            break
        j = skip_ws(text, end)
        if j < len(text) and text[j] not in ",}":
            return ObjectScan(members, None, broken=True)
    return ObjectScan(members, None)


def call_from_object(text: str, scan: ObjectScan, final: bool,
                     args_keys: tuple[str, ...] = ("arguments", "parameters")) -> PartialCall | None:
    """A call written as {"name": ..., "arguments": {...}} (Hermes, Llama 3, Mistral's first
    format), as far as it is written; None if the object is not a call (final only).

    The arguments are the model's own JSON text of the object, so the fragments a stream sends
    add up to exactly the final arguments; arguments written as a JSON string holding an object
    are decoded once complete."""
    if scan.broken:
        return None
    name = None
    span = scan.members.get("name")
    if span is not None and span[1] is not None:
        value = _loads(text[span[0]:span[1]])
        name = value if isinstance(value, str) and value else None
    args_span = next((scan.members[k] for k in args_keys if k in scan.members), None)
    arguments = ""
    if args_span is not None:
        start, end = args_span
        raw = text[start:end if end is not None else len(text)]
        if raw.startswith("{"):
            arguments = raw
        elif end is not None:  # a string holding the object, or not an object at all
            decoded = _loads(raw)
            arguments = decoded if isinstance(decoded, str) else ""
    if scan.end is None and not final:
        return PartialCall(name, arguments)
    if scan.end is None or name is None or not is_object(text[scan.start:scan.end]):
        return None  # the scan is lenient; a finished call must be JSON
    if args_span is None:
        arguments = "{}"
    if not isinstance(_loads(arguments), dict):
        return None
    return PartialCall(name, arguments, True)


def calls_in_json_list(text: str, pos: int, final: bool, out: Parsed) -> bool:
    """Appends to `out` the calls of a JSON list of {"name", "arguments"} objects whose first
    element starts at or after text[pos] (just after its "["); False if it is not one (final:
    or not yet complete)."""
    while True:
        pos = skip_ws(text, pos)
        if pos >= len(text):
            return not final
        if text[pos] == "]":
            return bool(out.calls)
        if text[pos] == ",":
            pos += 1
            continue
        if text[pos] != "{":
            return False
        scan = scan_object(text, pos)
        call = call_from_object(text, scan, final)
        if call is None:
            return False
        out.calls.append(call)
        if scan.end is None:
            return not final
        pos = scan.end


def is_object(text: str) -> bool:
    """`text` is the JSON text of an object."""
    return isinstance(_loads(text), dict)


_BAD = object()


def _loads(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return _BAD
