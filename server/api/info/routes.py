"""What the server serves and how it is: GET /v1/models, /health, /version, /load, /metrics
and /tokenizer_info.

/tokenizer_info is vLLM's, behind --enable-tokenizer-info-endpoint: the tokenizer's
configuration, so that a client such as lm-eval's remote tokenizer can work without fetching
the tokenizer from the hub. vLLM answers with the Hugging Face tokenizer's init kwargs
(tokenizer_config.json without file paths), plus `tokenizer_class` and the chat template in use.
"""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from nanovllm import __version__
from nanovllm.server.api.info.protocol import ModelCard, ModelList, ModelPermission, VersionResponse
from nanovllm.server.api.spec import APISpec
from nanovllm.server.errors import APIError, error_response
from nanovllm.server.protocol import ERROR_RESPONSES
from nanovllm.server.serving import Ctx

logger = logging.getLogger(__name__)
router = APIRouter()

CONFIG_FILE = "tokenizer_config.json"
_FILE_KEYS = ("vocab_file", "merges_file", "tokenizer_file", "name_or_path")


@router.get("/health", responses={503: ERROR_RESPONSES[503]})
async def health(ctx: Ctx) -> Response:
    """200 while the engine thread is alive; 503 once it died. With engine replicas (Ray):
    200 while one runs, with {"status": "degraded", ...} while some do not; 503 when none does."""
    error = ctx.engine.error
    if error is not None:
        return error_response("The engine is dead; the server log says why.", 503)
    if not ctx.engine.is_alive:
        return error_response("The engine is not running (it was shut down).", 503)
    if degraded := ctx.engine.degraded:
        return JSONResponse({"status": "degraded", "message": degraded})
    return Response(status_code=200)


@router.get("/version", response_model=VersionResponse)
async def version() -> dict:
    return {"version": __version__}


@router.get("/v1/models", response_model=ModelList, responses=ERROR_RESPONSES)
async def list_models(ctx: Ctx) -> ModelList:
    permission = ModelPermission(id=f"modelperm-{uuid.uuid4().hex}", created=ctx.created)
    card = ModelCard(id=ctx.model_name, created=ctx.created, root=ctx.model_root,
                     max_model_len=ctx.engine.max_model_len,
                     vocab_size=ctx.engine.processor.vocab_size,
                     permission=[permission], random_weights=ctx.engine.is_dummy)
    adapters = ctx.adapters.by_name if ctx.adapters else {}
    return ModelList(data=[card] + [  # LoRA adapters: their base is the `parent`
        ModelCard(id=name, created=ctx.created, root=name, parent=ctx.model_name,
                  max_model_len=card.max_model_len, vocab_size=card.vocab_size,
                  permission=[permission], random_weights=card.random_weights)
        for name in adapters])


@router.get("/load")
async def load(ctx: Ctx) -> dict:
    """vLLM's: generation requests in flight (0 unless --enable-server-load-tracking)."""
    return {"server_load": ctx.server_load.in_flight}


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
async def metrics(ctx: Ctx) -> Response:
    return Response(generate_latest(ctx.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/tokenizer_info", responses={404: ERROR_RESPONSES[404]})
async def get_tokenizer_info(ctx: Ctx) -> dict:
    """Served only with --enable-tokenizer-info-endpoint (a 404 otherwise)."""
    if ctx.tokenizer_info is None:
        raise APIError("Not Found: GET /tokenizer_info (start the server with "
                       "--enable-tokenizer-info-endpoint)", 404)
    return ctx.tokenizer_info


def read_tokenizer_config(tokenizer_dir: str | Path) -> dict:
    """The directory's tokenizer_config.json, or {} if it has none (or an unreadable one)."""
    path = Path(tokenizer_dir) / CONFIG_FILE
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        logger.warning("ignoring %s: %s", path, exc)
        return {}
    return config if isinstance(config, dict) else {}


# The fast class transformers' AutoTokenizer (vLLM's loader) picks from config.json's model_type
# when tokenizer_config.json names no class, for the architectures we serve.
_CLASS_BY_MODEL_TYPE = {"gpt2": "GPT2TokenizerFast", "llama": "LlamaTokenizerFast",
                        "mistral": "LlamaTokenizerFast", "qwen2": "Qwen2TokenizerFast",
                        "qwen3": "Qwen2TokenizerFast"}


def tokenizer_class(config: dict, model_type: str | None) -> str:
    """The class vLLM reports: the one its AutoTokenizer(use_fast=True) loads, i.e. the fast
    variant of tokenizer_config.json's `tokenizer_class` (every checkpoint we load has a
    tokenizer.json, which is what a fast tokenizer runs), else the model type's."""
    name = config.get("tokenizer_class")
    if isinstance(name, str) and name:
        return name if name.endswith("Fast") else name + "Fast"
    return _CLASS_BY_MODEL_TYPE.get(model_type, "PreTrainedTokenizerFast")


def _plain(value):
    """An AddedToken written out in full ({"content": ..., "lstrip": ...}) as its text, as vLLM
    serialises the tokenizer's AddedToken objects (special tokens, added_tokens_decoder)."""
    if isinstance(value, dict):
        if isinstance(value.get("content"), str):
            return value["content"]
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def model_type(model_dir: str | Path) -> str | None:
    """config.json's `model_type` beside the tokenizer, or None (no such file, e.g. a separate
    --tokenizer directory or a Ray ingress, which holds the tokenizer's files only)."""
    try:
        value = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = value.get("model_type") if isinstance(value, dict) else None
    return value if isinstance(value, str) else None


def tokenizer_info(config: dict, eos_token: str, max_model_len: int,
                   chat_template: str | None, model_type: str | None = None) -> dict:
    info = {k: _plain(v) for k, v in config.items() if k not in _FILE_KEYS}
    info.setdefault("eos_token", eos_token)
    info.setdefault("bos_token", eos_token)  # GPT-2's one special token is both
    info["model_max_length"] = max_model_len
    info["tokenizer_class"] = tokenizer_class(config, model_type)
    if chat_template is not None:
        info["chat_template"] = chat_template
    else:
        info.pop("chat_template", None)
    return info


API = APISpec(router)
