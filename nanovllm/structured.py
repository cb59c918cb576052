"""Structured outputs, the request side: compile and check a grammar for the engine's vocabulary.

llguidance does the grammar work (JSON schema, regex, Lark/GBNF): it runs on CPU, needs no
torch, builds each matcher lazily (no up-front automaton over the whole vocabulary) and bounds
its own per-token work. It is an optional dependency (`pip install nanovllm[structured]`).

GrammarCompiler turns a request's constraint into a CompiledGrammar (runner/structured.py),
which travels in SamplingParams.structured; the runner gives each of the request's sequences
its own matcher from it and bans, just before sampling, what the grammar does not allow.
A CompiledGrammar is immutable (the matchers hold all of a generation's state), so the compiler
keeps the ones it compiled, least recently used evicted first, and answers the same constraint
with the same object: an agent sends the same tools, so the same grammar, on every turn.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from nanovllm.runner.structured import CompiledGrammar
from nanovllm.values.errors import InvalidRequestError
from nanovllm.values.limits import MAX_CACHED_GRAMMARS

if TYPE_CHECKING:
    from nanovllm.tokenizer import Tokenizer

INSTALL_HINT = "structured outputs need llguidance: pip install 'nanovllm[structured]'"


class _TokenizerAdapter:
    """What llguidance.TokenizerWrapper reads from a tokenizer, taken from ours."""

    def __init__(self, tok: Tokenizer) -> None:
        self.eos_token_id = tok.eos_token_id
        self.bos_token_id = None
        self.tokens = tok.token_bytes
        self.special_token_ids = sorted(tok.special_ids)
        self._encode = tok.encode

    def __call__(self, text: str | bytes) -> list[int]:
        """The tokens of a piece of output text: never a BOS (a Llama tokenizer adds one to a
        prompt), or the grammar would force it into the output."""
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        return self._encode(text, add_special_tokens=False)


class GrammarCompiler:
    """Compiles and checks grammars for one tokenizer. llguidance's view of the vocabulary is
    built on first use (it takes a moment for GPT-2's), then shared by every request; so are
    the last `cache_size` grammars compiled (`compiles` counts the real compilations)."""

    def __init__(self, tokenizer: Tokenizer, cache_size: int = MAX_CACHED_GRAMMARS) -> None:
        self._tokenizer = tokenizer
        self._ll_tokenizer = None
        self._lock = threading.Lock()
        self._cache: OrderedDict[bytes, CompiledGrammar] = OrderedDict()
        self._cache_size = cache_size
        self.compiles = 0

    def ll_tokenizer(self):
        """llguidance's view of the vocabulary (an engine process rebuilds requests' grammars
        with its own)."""
        return self._ll()

    def _ll(self):
        try:
            import llguidance
        except ImportError:
            raise InvalidRequestError(INSTALL_HINT, "structured_outputs") from None
        with self._lock:
            if self._ll_tokenizer is None:
                wrapper = llguidance.TokenizerWrapper(_TokenizerAdapter(self._tokenizer))
                self._ll_tokenizer = llguidance.LLTokenizer(wrapper)
            return self._ll_tokenizer

    def compile(self, kind: str, value: Any, param: str) -> CompiledGrammar:
        """kind: "json" (a schema), "regex", "choice" (a list of strings) or "grammar" (Lark, or
        GBNF as llama.cpp writes it). A malformed one is an InvalidRequestError naming `param`
        (never kept: only grammars that compiled are)."""
        key = _cache_key(kind, value)
        with self._lock:
            if (cached := self._cache.get(key)) is not None:
                self._cache.move_to_end(key)
                return cached
        compiled = self._compile(kind, value, param)
        with self._lock:  # two requests may have compiled it at once: either result will do
            self.compiles += 1
            self._cache[key] = compiled
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return compiled

    def _compile(self, kind: str, value: Any, param: str) -> CompiledGrammar:
        tokenizer = self._ll()
        import llguidance

        try:
            grammar = _grammar_text(llguidance, kind, value)
            error = llguidance.LLMatcher.validate_grammar(grammar, tokenizer)
        except (ValueError, TypeError, RuntimeError) as exc:
            error = str(exc)
        if error:
            raise InvalidRequestError(f"Invalid {param}: {error}", param)
        return CompiledGrammar(grammar, tokenizer)


def _cache_key(kind: str, value: Any) -> bytes:
    """What the grammar is compiled from, as a digest. A schema's keys keep their order: it is
    the order JSON output writes the properties in."""
    text = value if isinstance(value, str) else \
        json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(f"{kind}\0{text}".encode("utf-8", "surrogatepass")).digest()


# Our kinds, as llguidance.grammar_from names them ("grammar": Lark, or GBNF as llama.cpp writes).
_FORMATS = {"regex": "regex", "choice": "choice", "grammar": "grammar"}
# JSON without optional whitespace (", " and ": " separators): a small model given the freedom
# fills its token budget with blanks. A schema may still ask otherwise through "x-guidance".
JSON_OPTIONS = {"whitespace_flexible": False}


def _grammar_text(llguidance, kind: str, value: Any) -> str:
    if kind == "json":  # llguidance reads a schema's `pattern`s as ECMAScript already
        return llguidance.LLMatcher.grammar_from_json_schema(value, defaults=JSON_OPTIONS)
    if kind == "regex":
        value = ecmascript_classes(value)
    text = value if kind != "choice" else json.dumps(value)
    return llguidance.grammar_from(_FORMATS[kind], text)


# ECMAScript's (and JSON Schema's) shorthand classes are ASCII, as vLLM's grammar backends read
# them; llguidance's regex syntax (Rust's) makes them Unicode, so `\d` would allow "۳".
_ASCII_CLASSES = {"d": "0-9", "w": "0-9A-Za-z_"}


def ecmascript_classes(regex: str) -> str:
    r"""`regex` with \d, \D, \w and \W spelled as ASCII classes (inside brackets too, where
    a negated one becomes a nested class, which llguidance's syntax allows)."""
    out, depth, i, body = [], 0, 0, -1  # body: where the innermost class's members start
    while i < len(regex):
        c = regex[i]
        if c == "\\" and i + 1 < len(regex):
            nxt = regex[i + 1]
            ascii_class = _ASCII_CLASSES.get(nxt.lower())
            if ascii_class is None:
                out.append(regex[i:i + 2])
            elif nxt.islower():
                out.append(ascii_class if depth else f"[{ascii_class}]")
            else:
                out.append(f"[^{ascii_class}]")
            i += 2
            continue
        if c == "[":
            depth += 1
            body = i + 2 if regex[i + 1:i + 2] == "^" else i + 1
        elif c == "]" and depth and i != body:  # "]" first in a class is itself
            depth -= 1
        out.append(c)
        i += 1
    return "".join(out)
