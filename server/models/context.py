"""ModelContext: what serving one loaded model needs beside the server-wide settings: its engine
(and the web page's inspector of it), and what is derived from its tokenizer and chat template
(the template, the grammar compiler, /tokenizer_info's answer)."""

from __future__ import annotations

from dataclasses import dataclass

from nanovllm import GrammarCompiler
from nanovllm.engine_client import EngineClient
from nanovllm.inspection import EngineInspector
from nanovllm.server.chat.template import ChatTemplate, special_tokens
from nanovllm.server.models.tokenizer_info import (
    model_type,
    read_tokenizer_config,
    tokenizer_info,
)


@dataclass(slots=True)
class ModelContext:
    engine: EngineClient  # the engine, as the server sees it
    name: str  # the name clients use in "model"
    root: str  # where the weights came from (the /v1/models "root"; never a local path)
    chat_template: ChatTemplate | None = None  # None: /v1/chat/completions is a 400
    tokenizer_info: dict | None = None  # GET /tokenizer_info's answer; None: not served
    grammar_compiler: GrammarCompiler | None = None  # structured outputs
    inspector: EngineInspector | None = None  # the web page's views of its engine


def model_context(engine: EngineClient, name: str, root: str | None = None, *,
                  chat_template: str | None = None, enable_tokenizer_info: bool = False,
                  inspector: EngineInspector | None = None) -> ModelContext:
    """The context of `engine` served as `name`; `chat_template` (Jinja text) overrides the
    checkpoint's own (its tokenizer_config.json's `chat_template`)."""
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
    return ModelContext(engine, name, root or name, template, info,
                        GrammarCompiler(engine.tokenizer), inspector)
