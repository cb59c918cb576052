"""What a chat request asks of the chat path beyond sampling, decided once before it is
submitted: the prompt (messages and tools rendered by the chat template), the grammar the
answer is held to (the request's own structured output, or a required / named tool_choice),
and the rules that read the answer back (reasoning, then tool calls). Chat completions and the
protocols built over the chat path share it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from nanovllm.runner.structured import CompiledGrammar
from nanovllm.server.chat.output import OutputRules
from nanovllm.server.chat.template import render_prompt
from nanovllm.server.chat.tool_calls.constraint import choice_reader, choice_schema
from nanovllm.server.chat.tool_calls.request import ToolChoice, check_tool_choice, check_tools
from nanovllm.server.errors import bad_request
from nanovllm.server.structured import compile_constraint, constraint_for, requested


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
    structured = _constraint(req, ctx, choice, tools)
    if structured is not None and rules.reasoning is not None and \
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
    schema = choice_schema(choice, tools, req.parallel_tool_calls is not False)
    if schema is None:  # tool_choice none or auto: the request's own constraint, if any
        return constraint_for(req, ctx.grammar_compiler)
    if requested(req):
        raise bad_request(f"tool_choice {choice.mode!r} constrains the answer to tool calls: it "
                          "cannot be combined with a structured output (response_format, "
                          "structured_outputs, guided_*).", "tool_choice")
    return compile_constraint(req, ctx.grammar_compiler, "json", schema, "tools")


def _reasoning_opened(req, ctx, tools, prompt: str) -> bool | None:
    """Whether the generation prompt (what add_generation_prompt adds) opens or closes the
    reasoning; None when it says nothing or there is no generation prompt to look at."""
    if ctx.reasoning_parser is None or not req.add_generation_prompt:
        return None
    bare = render_prompt(req, ctx.chat_template, ctx.model_name, tools, generation_prompt=False)
    if not prompt.startswith(bare):
        return None
    return ctx.reasoning_parser.opened_by(prompt[len(bare):])
