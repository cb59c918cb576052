"""EngineRequest: a request the input processor has checked, as the engine takes it.

Made only by `InputProcessor.process` (nanovllm/input_processor.py), once per request: whoever
submits one (the offline `LLM`, the server, a Ray replica) has already had it validated, so
the engine checks only what depends on its live state (a free request id, room in the queue).
"""

from __future__ import annotations

from dataclasses import dataclass

from nanovllm.values.beam_search_params import BeamSearchParams
from nanovllm.values.pooling_params import PoolingParams
from nanovllm.values.sampling_params import SamplingParams


@dataclass(frozen=True, slots=True)
class EngineRequest:
    request_id: str
    prompt_token_ids: list[int]      # never empty, every id in the vocabulary
    params: SamplingParams           # prompt + max_tokens fit the context and the KV pool
    prompt: str | None = None        # the text, when the prompt came as text
    final_only: bool = False         # deliver only the finished output (callers that read no other)
    beam: BeamSearchParams | None = None  # a beam search (then params.n is its width)
    pooling: PoolingParams | None = None  # a pooling request: computed whole once, not sampled
    token_type_ids: list[int] | None = None  # which text of a pair each prompt token is in
    adapter_id: int = 0              # a loaded adapter's id (a LoRARequest's lora_int_id); 0: none
    priority: int = 0                # lower first, under the 'priority' scheduling policy
