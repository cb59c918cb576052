"""POST /tokenize and /detokenize (vLLM's): text (or chat messages and tools, rendered by the
chat template) to token ids and back, with the model's own tokenizer and the engine's limits (a text
or id list longer than the context is a 400)."""

from __future__ import annotations

from fastapi import APIRouter

from nanovllm.input_processor import check_prompt_text, check_token_ids
from nanovllm.server.api.spec import APISpec
from nanovllm.server.api.tokenize.protocol import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
)
from nanovllm.server.chat.template import render_prompt
from nanovllm.server.chat.tool_calls.request import check_tools
from nanovllm.server.errors import bad_request
from nanovllm.server.protocol import ERROR_RESPONSES
from nanovllm.server.serving import Ctx, off_loop_if_big

router = APIRouter()


@router.post("/tokenize", response_model=TokenizeResponse, responses=ERROR_RESPONSES)
async def tokenize(body: TokenizeRequest, ctx: Ctx) -> dict:
    """A `prompt`, or chat `messages` as the chat template renders them (vLLM's two forms);
    `token_strs` are the vocabulary's strings ("Ġis"), which clients map back to ids."""
    ctx = await ctx.model_for(body.model)
    body.check_form()
    tok = ctx.engine.tokenizer
    if body.messages is None:
        text, param = body.prompt, "prompt"
    else:
        text = render_prompt(body, ctx.chat_template, ctx.model_name, check_tools(body.tools))
        param = "messages"
    check_prompt_text(text, tok, ctx.engine.max_model_len, param)
    add = body.add_special_tokens if body.add_special_tokens is not None else body.messages is None
    ids = await off_loop_if_big(len(text), tok.encode, text, add)
    strs = [tok.vocab_token(t) for t in ids] if body.return_token_strs else None
    return {"count": len(ids), "max_model_len": ctx.engine.max_model_len, "tokens": ids,
            "token_strs": strs}


@router.post("/detokenize", response_model=DetokenizeResponse, responses=ERROR_RESPONSES)
async def detokenize(body: DetokenizeRequest, ctx: Ctx) -> dict:
    ctx = await ctx.model_for(body.model)
    if len(body.tokens) > ctx.engine.max_model_len:  # no sequence of this model is longer
        raise bad_request(f"tokens holds {len(body.tokens)} ids, more than this model's context "
                          f"length of {ctx.engine.max_model_len}.", "tokens")
    check_token_ids(body.tokens, ctx.engine.processor.vocab_size, "tokens")
    # Special tokens stay in the text, as vLLM's and HF's detokenize keep them.
    return {"prompt": ctx.engine.tokenizer.decode(body.tokens, skip_special_tokens=False)}


API = APISpec(router)
