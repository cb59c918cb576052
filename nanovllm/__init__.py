"""nanovllm: a readable vLLM-style GPT-2 inference engine whose model runs on numpy.

The names below load on first use (PEP 562), so `import nanovllm.model` or the command line's
`--help` do not pay for the engine, and importing the package has no side effects.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_EXPORTS = {
    "LLM": "nanovllm.llm",
    "AsyncEngine": "nanovllm.async_engine", "EngineClient": "nanovllm.engine_client",
    "EngineConfig": "nanovllm.config",
    "LLMEngine": "nanovllm.engine", "EngineStats": "nanovllm.stats",
    "InvalidRequestError": "nanovllm.values.errors", "QueueFullError": "nanovllm.values.errors",
    "PromptType": "nanovllm.values.inputs", "TextPrompt": "nanovllm.values.inputs",
    "TokensPrompt": "nanovllm.values.inputs",
    "CompletionOutput": "nanovllm.values.outputs", "Logprob": "nanovllm.values.outputs",
    "RequestOutput": "nanovllm.values.outputs",
    "SamplingParams": "nanovllm.values.sampling_params",
    "PoolingParams": "nanovllm.values.pooling_params",
    "BeamSearchParams": "nanovllm.values.beam_search_params",
    "GrammarCompiler": "nanovllm.structured",
    "LoRARequest": "nanovllm.values.lora_request",
}
__all__ = ["LLM", "AsyncEngine", "BeamSearchParams", "CompletionOutput", "EngineClient", "EngineConfig", "EngineStats",
           "GrammarCompiler", "InvalidRequestError", "LLMEngine", "Logprob", "LoRARequest", "PoolingParams",
           "PromptType",
           "QueueFullError", "RequestOutput", "SamplingParams", "TextPrompt", "TokensPrompt",
           "__version__"]

if TYPE_CHECKING:
    from nanovllm.async_engine import AsyncEngine
    from nanovllm.config import EngineConfig
    from nanovllm.engine import LLMEngine
    from nanovllm.engine_client import EngineClient
    from nanovllm.llm import LLM
    from nanovllm.stats import EngineStats
    from nanovllm.structured import GrammarCompiler
    from nanovllm.values.beam_search_params import BeamSearchParams
    from nanovllm.values.errors import InvalidRequestError, QueueFullError
    from nanovllm.values.inputs import PromptType, TextPrompt, TokensPrompt
    from nanovllm.values.lora_request import LoRARequest
    from nanovllm.values.outputs import CompletionOutput, Logprob, RequestOutput
    from nanovllm.values.pooling_params import PoolingParams
    from nanovllm.values.sampling_params import SamplingParams


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'nanovllm' has no attribute {name!r}")
    from nanovllm.model.platform.threads import configure_thread_pools, thread_pool_settings

    late = configure_thread_pools()  # before numpy loads: see model/platform/threads.py
    if late:
        logging.getLogger("nanovllm").warning(
            "%s loaded before nanovllm: the thread pools started then spin by their defaults, slowing the "
            "engine's kernels (prefill most). Import nanovllm first, or set %s.",
            " and ".join(late), " ".join(f"{k}={v}" for k, v in thread_pool_settings().items()))
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
