"""Per-app state shared by the routes (reached through request.app.state, never a global)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from nanovllm import GrammarCompiler
from nanovllm.engine_client import EngineClient
from nanovllm.server.chat_template import ChatTemplate
from nanovllm.server.errors import APIError
from nanovllm.server.load import ServerLoad
from nanovllm.server.metrics import ServerMetrics
from nanovllm.values.errors import quote


@dataclass(slots=True)
class ServerContext:
    engine_loop: EngineClient  # the engine, as the server sees it
    model_name: str  # the name clients use in "model"
    model_root: str  # where the weights came from (the /v1/models "root")
    metrics: ServerMetrics
    created: int = field(default_factory=lambda: int(time.time()))
    chat_template: ChatTemplate | None = None  # None: /v1/chat/completions is a 400
    tokenizer_info: dict | None = None  # GET /tokenizer_info's answer; None: not served
    grammar_compiler: GrammarCompiler | None = None  # structured outputs (set by build_app)
    # --return-tokens-as-token-ids: every request's logprobs name tokens "token_id:N".
    return_tokens_as_token_ids: bool = False
    server_load: ServerLoad = field(default_factory=ServerLoad)  # GET /load

    def apply_defaults(self, req) -> None:
        """The operator's defaults for the request fields a server flag turns on."""
        if self.return_tokens_as_token_ids:
            req.return_tokens_as_token_ids = True

    def check_model(self, model: str | None) -> None:
        """A request may omit "model"; naming any other model is a 404, as in vLLM."""
        if model is not None and model != self.model_name:
            raise APIError(f"The model {quote(model, 100)} does not exist.", 404, "model")


def get_ctx(request: Request) -> ServerContext:
    return request.app.state.ctx


Ctx = Annotated[ServerContext, Depends(get_ctx)]  # route parameter type: the app's context
