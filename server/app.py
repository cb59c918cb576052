"""build_app(engine or model pool, ...): the FastAPI application, with no module-level state.

The caller owns the engine client or the pool (starts it before serving, shuts it down after);
several apps may share one (e.g. with and without an API key), each with its own metrics.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from nanovllm import EngineClient, __version__  # (nanovllm's names set the thread pools first)
from nanovllm.inspection import EngineInspector
from nanovllm.server.api.table import APIS
from nanovllm.server.chat.reasoning import REASONING_PARSERS
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
    ModelLeaseMiddleware,
    RequestCountMiddleware,
    RequestIdMiddleware,
)
from nanovllm.server.models.context import model_context
from nanovllm.server.models.pool import ModelPool
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


def engine_stats(models: ModelPool):
    """The engines' stats for /metrics: one engine's (or its replicas'), or each loaded
    model's when the server has several."""
    loaded = models.loaded()
    if len(models.names) == 1 and loaded:
        engine = loaded[0].engine
        return engine.stats if engine.replica_stats is None else engine.replica_stats
    return [(m.name, m.engine.stats) for m in loaded]


def _named(registry: dict, name: str | None, what: str):
    if name is None:
        return None
    if name not in registry:
        raise ValueError(f"unknown {what} parser {name!r}; known: {', '.join(sorted(registry))}")
    return registry[name]


def build_app(models: EngineClient | ModelPool, *, inspector: EngineInspector | None = None,
              served_model_name: str | None = None, model_root: str | None = None,
              api_key: str | None = None, limits: ServerLimits | None = None,
              ui: bool = True, chat_template: str | None = None,
              enable_tokenizer_info: bool = False,
              return_tokens_as_token_ids: bool = False,
              enable_server_load_tracking: bool = False,
              tool_call_parser: str | None = None, reasoning_parser: str | None = None,
              structured_in_reasoning: bool = False, log_requests: bool = True,
              adapters: ServedAdapters | None = None) -> FastAPI:
    """An OpenAI-compatible app serving `models`: one engine (its owner starts and stops it),
    served as `served_model_name`, or a pool of models (server/models/pool.py: its loader
    decides each one's chat template and tokenizer info; the caller stops it). The web page is
    at /ui unless `ui` is False (its engine, attention, forward-pass and step views need an
    `inspector` of one engine); `model_root` is what /v1/models shows as "root" (a name, never
    a local path: it is public).

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
    if not isinstance(models, ModelPool):
        models = ModelPool.of(model_context(
            models, served_model_name, model_root, chat_template=chat_template,
            enable_tokenizer_info=enable_tokenizer_info, inspector=inspector))
    first = models.loaded()[0] if models.loaded() else None
    metrics = ServerMetrics(models.default_name, lambda: engine_stats(models),
                            first.engine.max_model_len if first else 1024)
    limits = limits or ServerLimits()
    app.state.ctx = ServerContext(models, metrics, limits,
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
        install_ui(app)
    if first is not None and len(models.names) == 1:
        document_vocabulary(app, first.engine.processor.vocab_size)
    app.add_middleware(ModelLeaseMiddleware, request_scope=models.request_scope)
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
