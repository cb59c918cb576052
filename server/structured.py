"""The structured-output fields of a request, checked and compiled before it reaches the engine.

vLLM's `structured_outputs` ({"json" | "regex" | "choice" | "grammar" | "json_object"}) and its
older `guided_json`, `guided_regex`, `guided_choice`, `guided_grammar`, and OpenAI's
`response_format` ({"type": "json_object"} or {"type": "json_schema", "json_schema":
{"schema": ...}}). At most one constraint per request; a malformed or oversized one is a 400
naming its field. Compiling builds llguidance's view of the vocabulary on first use, so the
routes run it off the event loop (`wants_structure`).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from nanovllm import GrammarCompiler, InvalidRequestError
from nanovllm.server.errors import bad_request, invalid_request

if TYPE_CHECKING:
    from nanovllm.runner.structured import CompiledGrammar

MAX_GRAMMAR_CHARS = 64_000  # a schema, regex or grammar (as JSON text); bounds compile work
MAX_CHOICES = 1_024
ANY_JSON_OBJECT = {"type": "object"}
_GUIDED = (("guided_json", "json"), ("guided_regex", "regex"), ("guided_choice", "choice"),
           ("guided_grammar", "grammar"))
_STRUCTURED_KEYS = ("json", "regex", "choice", "grammar")


def wants_structure(req) -> bool:
    return any(getattr(req, name) is not None for name, _ in _GUIDED) or \
        req.structured_outputs is not None or _response_format_kind(req) != "text"


def _response_format_kind(req) -> str:
    rf = req.response_format
    return rf.get("type", "text") if isinstance(rf, dict) else "text"


def requested(req) -> list[tuple[str, Any, str]]:
    """Every constraint the request asks for, as (kind, value, field)."""
    found = [(kind, getattr(req, name), name) for name, kind in _GUIDED
             if getattr(req, name) is not None]
    so = req.structured_outputs
    if so is not None:
        unknown = sorted(k for k, v in so.items()
                         if v not in (None, False) and k not in (*_STRUCTURED_KEYS, "json_object"))
        if unknown:
            raise bad_request(f"structured_outputs.{unknown[0]} is not supported by this server.",
                              "structured_outputs")
        found += [(key, so[key], "structured_outputs") for key in _STRUCTURED_KEYS
                  if so.get(key) is not None]
        if so.get("json_object"):
            found.append(("json", ANY_JSON_OBJECT, "structured_outputs"))
    kind = _response_format_kind(req)
    if kind == "json_object":
        found.append(("json", ANY_JSON_OBJECT, "response_format"))
    elif kind == "json_schema":
        spec = req.response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise bad_request("response_format.json_schema.schema must be a JSON schema object.",
                              "response_format")
        found.append(("json", schema, "response_format"))
    elif kind != "text":
        raise bad_request(f"response_format type {kind!r} is not supported (text, json_object "
                          "or json_schema).", "response_format")
    return found


def _check_value(kind: str, value: Any, param: str) -> None:
    if kind == "choice":
        if not isinstance(value, list) or not value or len(value) > MAX_CHOICES or \
                not all(isinstance(c, str) and c for c in value):
            raise bad_request(f"{param}: choice must be a list of 1 to {MAX_CHOICES} non-empty "
                              "strings.", param)
    elif kind == "json":
        if not isinstance(value, dict | str):
            raise bad_request(f"{param}: the JSON schema must be an object (or its JSON text).",
                              param)
    elif not isinstance(value, str) or not value:
        raise bad_request(f"{param}: the {kind} must be a non-empty string.", param)
    size = len(value) if isinstance(value, str) else len(json.dumps(value))
    if size > MAX_GRAMMAR_CHARS:
        raise bad_request(f"{param}: the {kind} is {size} characters long; at most "
                          f"{MAX_GRAMMAR_CHARS} are accepted.", param)


def constraint_for(req, compiler: GrammarCompiler) -> CompiledGrammar | None:
    """The request's compiled constraint, or None; any problem is a 400 naming the field."""
    found = requested(req)
    if not found:
        return None
    if len(found) > 1:
        fields = sorted({f for _, _, f in found})
        raise bad_request(f"Only one structured output constraint per request, got {fields}.",
                          fields[-1])
    kind, value, param = found[0]
    _check_value(kind, value, param)
    return compile_constraint(req, compiler, kind, value, param)


def compile_constraint(req, compiler: GrammarCompiler, kind: str, value: Any,
                       param: str) -> CompiledGrammar:
    """One checked constraint compiled for `req`; any problem is a 400 naming `param`."""
    # A grammar ends by allowing only EOS; these would forbid or ignore that end.
    if req.ignore_eos:
        raise bad_request("ignore_eos cannot be combined with a structured output constraint.",
                          "ignore_eos")
    if req.min_tokens:
        raise bad_request("min_tokens cannot be combined with a structured output constraint.",
                          "min_tokens")
    if req.allowed_token_ids:  # the two could leave no token at all
        raise bad_request("allowed_token_ids cannot be combined with a structured output "
                          "constraint.", "allowed_token_ids")
    try:
        return compiler.compile(kind, value, param)
    except InvalidRequestError as exc:
        raise invalid_request(exc) from exc
