"""The bodies of Ollama's API (its docs/api.md and api/types.go): /api/chat, /api/generate,
/api/embed (and the older /api/embeddings), /api/show; and `options`, Ollama's sampling and
runtime settings, each honoured, refused or (if it only tunes Ollama's own runtime) accepted
and ignored."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, Field

from nanovllm.server.field_policy import FieldPolicy
from nanovllm.server.protocol import MAX_MESSAGES, FrontEndRequest, PoolingFields

# Ollama's top-level fields that the models below do not declare (server/field_policy.py).
# Ollama's is a sampling API: a field nobody decided is refused, as on chat completions.
FIELDS = FieldPolicy(
    "/api",
    refused={
        "logprobs": "this API's token log probabilities are not served here (chat completions "
                    "has `logprobs`)",
        "top_logprobs": "this API's token log probabilities are not served here (chat "
                        "completions has `top_logprobs`)",
    },
    ignored={},
    unknown_ignored=False,
)

# `options` other than the sampling ones options.py maps (server/field_policy.py again).
OPTIONS = FieldPolicy(
    "/api options",
    refused={name: "not implemented here, and it would change the answer" for name in (
        "num_keep", "tfs_z", "typical_p", "repeat_last_n", "mirostat", "mirostat_tau",
        "mirostat_eta", "penalize_newline")},
    ignored={name: "it tunes how Ollama's runtime loads and runs a model; the server's flags "
                   "decide that here" for name in (
        "numa", "num_batch", "num_gpu", "main_gpu", "low_vram", "f16_kv", "logits_all",
        "vocab_only", "use_mmap", "use_mlock", "embedding_only", "num_thread")},
    unknown_ignored=False,
    refusal="options.{field}: {reason}.",
)


class OllamaRequest(FrontEndRequest):
    """What Ollama's generating requests share. `stream` defaults to true, as in Ollama."""

    FIELDS: ClassVar[FieldPolicy] = FIELDS

    model: str
    stream: bool = True
    format: str | dict[str, Any] | None = None  # "json" or a JSON schema
    options: dict[str, Any] | None = None
    think: bool | str | None = None
    keep_alive: Any = None  # how long the model stays loaded after this request (models.py)


class ChatRequest(OllamaRequest):
    """POST /api/chat. Messages are checked by the route, which names the message at fault."""

    messages: list[dict[str, Any]] = Field(..., min_length=1, max_length=MAX_MESSAGES)
    tools: list[dict[str, Any]] | None = None


class GenerateRequest(OllamaRequest):
    """POST /api/generate. An empty prompt only loads the model (Ollama's meaning)."""

    prompt: str = ""
    system: str | None = None
    suffix: str | None = None
    template: str | None = None
    context: list[int] | None = None
    images: list[Any] | None = None
    raw: bool = False


class EmbedRequest(PoolingFields):
    """POST /api/embed: `truncate` (default true) cuts each text to the context length."""

    model: str
    input: str | list[str] = Field(..., min_length=1)
    truncate: bool = True
    options: dict[str, Any] | None = None
    keep_alive: Any = None
    dimensions: int | None = Field(None, ge=1)


class EmbeddingsRequest(PoolingFields):
    """POST /api/embeddings (Ollama's older endpoint): one prompt, one vector."""

    model: str
    prompt: str = Field(..., min_length=1)
    options: dict[str, Any] | None = None
    keep_alive: Any = None


class ShowRequest(BaseModel):
    """POST /api/show: `model` (older clients send `name`)."""

    model: str | None = None
    name: str | None = None
    verbose: bool | None = None
