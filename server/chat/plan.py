"""What a chat request asks of the chat path beyond sampling, decided once before it is
submitted: the prompt (messages and tools rendered by the chat template), the grammar the
answer is held to (the request's own structured output, a required / named tool_choice, or
under "auto" a call the model opens; with a reasoning budget, the reasoning too:
server/chat/grammar.py), and the rules that read the answer back (reasoning, then tool calls).
Chat completions and the protocols built over the chat path share it."""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass

from nanovllm import InvalidRequestError
from nanovllm.runner.structured import CompiledGrammar
from nanovllm.server.chat import grammar
from nanovllm.server.chat.output import OutputRules
from nanovllm.server.chat.template import render_prompt
from nanovllm.server.chat.tool_calls.constraint import call_schema, choice_reader, choice_schema
from nanovllm.server.chat.tool_calls.request import ToolChoice, check_tool_choice, check_tools
from nanovllm.server.errors import bad_request
from nanovllm.server.structured import compile_constraint, constraint_for, requested

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ChatPlan:
    prompt: str  # the rendered prompt text
    structured: CompiledGrammar | None
    rules: OutputRules
    keep_special_tokens: bool  # the tool parser reads special tokens (Mistral's [TOOL_CALLS])


def plan_chat(req, ctx) -> ChatPlan:
    """`req`: a ChatCompletionRequest; `ctx`: the ServerContext. A 400 naming the field for
    anything that cannot be honoured."""
    tools = check_tools(req.tools)
    choice = check_tool_choice(req.tool_choice, tools, ctx.tool_parser is not None)
    prompt = render_prompt(req, ctx.chat_template, ctx.model_name, tools)
    rules = OutputRules(ctx.reasoning_parser, _reasoning_opened(req, ctx, tools, prompt),
                        _tool_reader(choice, ctx),
                        None if req.parallel_tool_calls is not False else 1)
    budget = _reasoning_budget(req, ctx, rules)
    structured = _constraint(req, ctx, choice, tools) if budget is None \
        else _budgeted(req, ctx, choice, tools, rules, budget)
    if structured is not None and budget is None and rules.reasoning is not None and \
            not ctx.structured_in_reasoning and rules.reasoning_opened is not False:
        # vLLM's rule: the grammar holds the answer, from the end of the reasoning on.
        structured = dataclasses.replace(structured,
                                         starts_after=rules.reasoning.end.encode("utf-8"))
    keep = choice.mode == "auto" and ctx.tool_parser is not None and \
        ctx.tool_parser.keeps_special_tokens and "skip_special_tokens" not in req.model_fields_set
    return ChatPlan(prompt, structured, rules, keep)


def _tool_reader(choice: ToolChoice, ctx):
    if choice.mode == "auto":
        return ctx.tool_parser()
    return choice_reader(choice)


def _constraint(req, ctx, choice: ToolChoice, tools) -> CompiledGrammar | None:
    schema = _choice_schema(req, choice, tools)
    if schema is not None:
        return compile_constraint(req, ctx.grammar_compiler, "json", schema, "tools")
    calls = _lazy_calls(req, ctx, choice, tools)
    if calls is not None:
        return _lazy_grammar(ctx, grammar.plain(calls))
    return constraint_for(req, ctx.grammar_compiler)  # the request's own, if any


def _choice_schema(req, choice: ToolChoice, tools) -> dict | None:
    """A required / named tool_choice's schema (None for none and auto)."""
    schema = choice_schema(choice, tools, req.parallel_tool_calls is not False)
    if schema is not None and requested(req):
        raise bad_request(f"tool_choice {choice.mode!r} constrains the answer to tool calls: it "
                          "cannot be combined with a structured output (response_format, "
                          "structured_outputs, guided_*).", "tool_choice")
    return schema


def _lazy_calls(req, ctx, choice: ToolChoice, tools) -> str | None:
    """The lazy tool-call grammar's answer rule under tool_choice auto, when the parser's calls
    open with a start tag or are the answer itself, and nothing else holds the answer (a
    structured output, or sampling options a grammar cannot be combined with: then the calls
    are read as the model writes them)."""
    parser = ctx.tool_parser
    held = parser is not None and (parser.call_tags or parser.leading_calls_key)
    if choice.mode != "auto" or not tools or not held or ctx.grammar_compiler is None or \
            requested(req) or req.ignore_eos or req.min_tokens or req.allowed_token_ids:
        return None
    if parser.call_tags:
        return grammar.lazy_calls_answer(*parser.call_tags, call_schema(tools))
    return grammar.leading_calls_answer(call_schema(tools, parser.leading_calls_key))


def _lazy_grammar(ctx, lark: str) -> CompiledGrammar | None:
    """Compiled; a tool_choice "auto" request is never refused for it (without llguidance, or
    with a schema it cannot compile even leniently, the calls are only read, as before)."""
    try:
        return ctx.grammar_compiler.compile("grammar", lark, "tools")
    except InvalidRequestError as exc:
        logger.warning("tool calls not held to the tools' schemas: %s", str(exc)[:300])
        return None


def _reasoning_budget(req, ctx, rules: OutputRules) -> int | None:
    """thinking_token_budget, where there is reasoning to bound (not when the prompt closed
    it); it needs the reasoning parser's tags."""
    if req.thinking_token_budget is None:
        return None
    if ctx.reasoning_parser is None:
        raise bad_request("thinking_token_budget needs the server's --reasoning-parser (its "
                          "tags say where the reasoning ends).", "thinking_token_budget")
    return None if rules.reasoning_opened is False else req.thinking_token_budget


def _budgeted(req, ctx, choice: ToolChoice, tools, rules: OutputRules,
              budget: int) -> CompiledGrammar:
    """One grammar for the reasoning, at most `budget` tokens, and the answer after it, held
    as without a budget."""
    schema = _choice_schema(req, choice, tools)
    own = requested(req)
    if schema is None and own:
        kind, value, param = own[0]
        if len(own) > 1 or kind != "json":
            raise bad_request(f"thinking_token_budget can be combined with a JSON schema only, "
                              f"not with a {kind} constraint.", param)
        schema = json.loads(value) if isinstance(value, str) else value
    answer = grammar.json_answer(schema) if schema is not None \
        else _lazy_calls(req, ctx, choice, tools) or grammar.free_answer()
    parser = rules.reasoning
    lark = grammar.with_reasoning_budget(answer, parser.start, parser.end, budget,
                                         opened_by_prompt=rules.reasoning_opened is True)
    return compile_constraint(req, ctx.grammar_compiler, "grammar", lark,
                              "thinking_token_budget")


def _reasoning_opened(req, ctx, tools, prompt: str) -> bool | None:
    """Whether the generation prompt (what add_generation_prompt adds) opens or closes the
    reasoning; None when it says nothing or there is no generation prompt to look at."""
    if ctx.reasoning_parser is None or not req.add_generation_prompt:
        return None
    bare = render_prompt(req, ctx.chat_template, ctx.model_name, tools, generation_prompt=False)
    if not prompt.startswith(bare):
        return None
    return ctx.reasoning_parser.opened_by(prompt[len(bare):])
