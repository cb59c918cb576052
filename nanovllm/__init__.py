"""nanovllm: a readable vLLM-style GPT-2 inference engine whose model runs on numpy."""

import model.threads  # noqa: F401  (first: it sets up the thread pools before numpy loads)

# isort: split
from nanovllm.config import EngineConfig
from nanovllm.engine import EngineStats, LLMEngine
from nanovllm.errors import InvalidRequestError
from nanovllm.inputs import PromptType, TextPrompt, TokensPrompt
from nanovllm.llm import LLM
from nanovllm.outputs import CompletionOutput, Logprob, RequestOutput
from nanovllm.sampling_params import SamplingParams

__version__ = "0.1.0"
__all__ = ["LLM", "CompletionOutput", "EngineConfig", "EngineStats", "InvalidRequestError",
           "LLMEngine", "Logprob", "PromptType", "RequestOutput", "SamplingParams", "TextPrompt",
           "TokensPrompt", "__version__"]
