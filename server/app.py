"""build_app(engine, ...): the FastAPI application, with no module-level state.

The caller owns the engine client (starts it before serving, shuts it down after); several
apps may share one (e.g. with and without an API key), each with its own metrics.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from nanovllm import GrammarCompiler, __version__
from nanovllm.engine_client import EngineClient
from nanovllm.inspection import EngineInspector
from nanovllm.server.api.info.routes import model_type, read_tokenizer_config, tokenizer_info
from nanovllm.server.api.table import APIS
from nanovllm.server.chat.reasoning import REASONING_PARSERS
from nanovllm.server.chat.template import ChatTemplate, special_tokens
from nanovllm.server.chat.tool_calls import PARSERS
from nanovllm.server.errors import ErrorShapes, install_error_handlers
from nanovllm.server.lora import ServedAdapters
from nanovllm.server.metrics import ServerMetrics
from nanovllm.server.middleware import (
    AccessLogMiddleware,
    APIKeyMiddleware,
    BodySizeLimitMiddleware,
    InternalErrorMiddleware,
    JSONContentTypeMiddleware,
    LoadTrackingMiddleware,
    RequestCountMiddleware,
    RequestIdMiddleware,
)
from nanovllm.server.serving import ServerContext
from nanovllm.server.ui.routes import API_PREFIX as UI_API_PREFIX
from nanovllm.server.ui.routes import install_ui
from nanovllm.values.limits import ServerLimits

DOCS_STATIC_URL = "/docs/static"  # Swagger UI's and ReDoc's scripts, styles and icon


def document_vocabulary(app: FastAPI, vocab_size: int) -> None:
    """Write this model's largest token id into the OpenAPI document (see protocol.TokenId)."""
    generate = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            _set_token_id_maximum(generate(), vocab_size - 1)
        return app.openapi_schema

    app.openapi = openapi


def _set_token_id_maximum(node, maximum: int) -> None:
    if isinstance(node, dict):
        if node.pop("x-token-id", False):
            node["maximum"] = maximum
        for value in node.values():
            _set_token_id_maximum(value, maximum)
    elif isinstance(node, list):
        for value in node:
            _set_token_id_maximum(value, maximum)


def _named(registry: dict, name: str | None, what: str):
    if name is None:
        return None
    if name not in registry:
        raise ValueError(f"unknown {what} parser {name!r}; known: {', '.join(sorted(registry))}")
    return registry[name]


def build_app(engine: EngineClient, *, inspector: EngineInspector | None = None,
              served_model_name: str, model_root: str | None = None,
              api_key: str | None = None, limits: ServerLimits | None = None,
              ui: bool = True, chat_template: str | None = None,
              enable_tokenizer_info: bool = False,
              return_tokens_as_token_ids: bool = False,
              enable_server_load_tracking: bool = False,
              tool_call_parser: str | None = None, reasoning_parser: str | None = None,
              structured_in_reasoning: bool = False, log_requests: bool = True,
              adapters: ServedAdapters | None = None) -> FastAPI:
    """An OpenAI-compatible app serving `engine` as `served_model_name`, with the web
    page at /ui unless `ui` is False (its engine, attention, forward-pass and step views need
    an `inspector` of one engine); `model_root` is what /v1/models shows as "root" (a name,
    never a local path: it is public).

    `chat_template` (Jinja text) overrides the checkpoint's own (its tokenizer_config.json's
    `chat_template`); with neither, /v1/chat/completions is a 400. `tool_call_parser` (a name
    in tool_calls.PARSERS) turns tool_choice "auto" on; `reasoning_parser` (a name in
    REASONING_PARSERS) splits reasoning from the answer, which is all a grammar holds unless
    `structured_in_reasoning`. `log_requests`: one line per request in the log (the logger
    "nanovllm.access"). `adapters`: the LoRA adapters served by name (server/lora.py), with
    /v1/load_lora_adapter; None: off.
    """
    # /docs (Swagger UI) and /redoc from the package's own copies of their scripts, not a CDN:
    # the page that documents the limits must work offline too.
    app = FastAPIOffline(title="nanovllm OpenAI-compatible server", version=__version__,
                         description="Completions, chat (also as OpenAI's Responses and "
                                     "Anthropic's Messages), tokenization and metrics for a "
                                     "GPT-2 or Llama-family model.",
                         static_url=DOCS_STATIC_URL,
                         swagger_ui_parameters={"validatorUrl": None})  # (no call to swagger.io)
    # Several engine replicas (server/ray/client.py): their stats, one labelled series each.
    metrics = ServerMetrics(served_model_name, lambda: engine.stats
                            if engine.replica_stats is None else engine.replica_stats,
                            engine.max_model_len)
    tok_config = read_tokenizer_config(engine.tokenizer.model_dir)
    eos_id = engine.tokenizer.eos_token_id  # None for an encoder: it ends no text
    eos = engine.tokenizer.decode_token(eos_id) if eos_id is not None else ""
    template_text = chat_template or tok_config.get("chat_template")
    template = None
    if isinstance(template_text, str):
        template = ChatTemplate(template_text, special_tokens(tok_config, eos))
    info = tokenizer_info(tok_config, eos, engine.max_model_len,
                          template_text if template else None,
                          model_type(engine.tokenizer.model_dir)) if enable_tokenizer_info else None
    limits = limits or ServerLimits()
    app.state.ctx = ServerContext(engine, served_model_name, model_root or served_model_name,
                                  metrics, limits, chat_template=template, tokenizer_info=info,
                                  grammar_compiler=GrammarCompiler(engine.tokenizer),
                                  return_tokens_as_token_ids=return_tokens_as_token_ids,
                                  tool_parser=_named(PARSERS, tool_call_parser, "tool call"),
                                  reasoning_parser=_named(REASONING_PARSERS, reasoning_parser,
                                                          "reasoning"),
                                  structured_in_reasoning=structured_in_reasoning,
                                  adapters=adapters)
    errors = ErrorShapes({path: api.errors for api in APIS for path in api.paths})
    install_error_handlers(app, errors)
    for api in APIS:
        app.include_router(api.router)
    if ui:
        install_ui(app, inspector)
    document_vocabulary(app, engine.processor.vocab_size)
    # innermost: a 415 neither counts nor passes auth
    app.add_middleware(JSONContentTypeMiddleware, errors=errors)
    if enable_server_load_tracking:  # inside the API key check: refused requests never count
        app.add_middleware(LoadTrackingMiddleware, load=app.state.ctx.server_load,
                           paths=frozenset(path for api in APIS for path in api.generating))
    if api_key:
        # vLLM's /v1, the page's data, and every API's own paths (Ollama's /api)
        protected = ("/v1", UI_API_PREFIX, *(path for api in APIS for path in api.paths))
        app.add_middleware(APIKeyMiddleware, api_key=api_key, protected=protected,
                           headers=list(dict.fromkeys(api.key_header for api in APIS)),
                           errors=errors)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=limits.max_request_body_bytes,
                       errors=errors)
    app.add_middleware(InternalErrorMiddleware, errors=errors)
    app.add_middleware(RequestCountMiddleware, count=metrics.count_http_request)
    app.add_middleware(RequestIdMiddleware)  # every answer, a 413 or 500 too, has it
    if log_requests:  # outermost: every answer is logged, with the id it was given
        app.add_middleware(AccessLogMiddleware, logger=logging.getLogger("nanovllm.access"))
    return app
