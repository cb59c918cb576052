"""The checks of a pooling request (an embedding, or a pair to score), once, for LLM and the
server alike: the input's form and size, what the checkpoint can do, and the request's options.

A pooling sequence is computed whole in one step, so its tokens must fit the context
(`max_model_len`, which for a sentence-transformers checkpoint is at most its
`max_seq_length`) unless `truncate_prompt_tokens` cuts it; then a text loses its own tokens from
the end and keeps its special tokens, as sentence-transformers' tokenizer truncates. A broken
rule raises InvalidRequestError naming `param`, the field the input came in. A pooling engine's
`InputProcessor` holds one (`processor.pooling`), so LLM and the server check alike.
"""

from __future__ import annotations

from dataclasses import dataclass

from nanovllm.input_processor import (
    check_prompt_text,
    check_token_ids,
    is_id_sequence,
    unpack_prompt,
)
from nanovllm.model.checkpoint.pooling_config import PoolingConfig
from nanovllm.tokenizer import Tokenizer
from nanovllm.values.errors import InvalidRequestError
from nanovllm.values.inputs import PromptType
from nanovllm.values.pooling_params import PoolingParams
from nanovllm.values.request import EngineRequest
from nanovllm.values.sampling_params import SamplingParams

# A pooling request samples nothing: its sequence carries the default parameters.
NO_SAMPLING = SamplingParams(max_tokens=1)


@dataclass(frozen=True, slots=True)
class PoolingInput:
    tokenizer: Tokenizer       # the engine's, and its limits:
    vocab_size: int
    max_model_len: int
    pooling: PoolingConfig
    hidden_size: int
    is_cross_encoder: bool     # scores pairs; embeds nothing

    def embed(self, request_id: str, prompt: PromptType, params: PoolingParams,
              param: str = "input") -> EngineRequest:
        """One text or list of token ids to embed, checked."""
        if self.is_cross_encoder:
            raise InvalidRequestError("This model is a cross-encoder: it scores pairs of texts "
                                      "and makes no embeddings. Use /v1/score or /v1/rerank (in "
                                      "Python: LLM.score).", "model")
        self.check_dimensions(params)
        try:
            prompt = unpack_prompt(prompt)
        except ValueError as exc:
            raise InvalidRequestError(str(exc), param) from exc
        limit = self.truncation(params)
        if isinstance(prompt, str):
            self.check_text(prompt, param, limit is not None)
            ids, _ = self.tokenizer.encode_pair(prompt, None, limit)
        elif is_id_sequence(prompt):
            ids = list(prompt)[:limit] if limit is not None else list(prompt)
            self.check_length(len(ids), param)
            check_token_ids(ids, self.vocab_size, param)
        else:
            raise InvalidRequestError(f"{param} must be a text or a list of token ids.", param)
        self.check_length(len(ids), param)
        return EngineRequest(request_id, [int(t) for t in ids], NO_SAMPLING,
                             prompt if isinstance(prompt, str) else None, final_only=True,
                             pooling=params)

    def pair(self, request_id: str, first: str, second: str, params: PoolingParams,
             names: tuple[str, str] = ("text_1", "text_2")) -> EngineRequest:
        """A query and a document as one sequence, for a cross-encoder to score; `names` are
        the request's fields they came from."""
        if not self.is_cross_encoder:
            raise InvalidRequestError("This model makes embeddings; pairs are scored by a "
                                      "cross-encoder.", "model")
        for text, name in zip((first, second), names):
            if not isinstance(text, str):
                raise InvalidRequestError(f"{name} must be a text.", name)
            self.check_text(text, name, params.truncate_prompt_tokens is not None)
        ids, types = self.tokenizer.encode_pair(first, second, self.truncation(params))
        self.check_length(len(ids), names[1])
        return EngineRequest(request_id, ids, NO_SAMPLING, None, final_only=True,
                             pooling=params, token_type_ids=types)

    def check_dimensions(self, params: PoolingParams) -> None:
        d = params.dimensions
        if d is None:
            return
        if not self.pooling.allows_dimensions(d):
            sizes = self.pooling.matryoshka
            allowed = (f"it allows {', '.join(map(str, sizes))}" if isinstance(sizes, tuple)
                       else "it was not trained to be cut (not a Matryoshka model)")
            raise InvalidRequestError(f"dimensions={d} is not supported by this model: "
                                      f"{allowed}.", "dimensions")
        if d > self.hidden_size:
            raise InvalidRequestError(f"dimensions={d} is more than the model's "
                                      f"{self.hidden_size}.", "dimensions")

    def check_text(self, text: str, param: str, truncated: bool) -> None:
        if not text:
            raise InvalidRequestError(f"{param} must not be an empty text.", param)
        check_prompt_text(text, self.tokenizer, self.max_model_len + 1,
                          param, truncated)

    def truncation(self, params: PoolingParams) -> int | None:
        n, limit = params.truncate_prompt_tokens, self.max_model_len
        if n is None:
            return None
        if n > limit:
            raise InvalidRequestError(f"truncate_prompt_tokens ({n}) must be at most this model's "
                                      f"context length of {limit}.", "truncate_prompt_tokens")
        return limit if n == -1 else n

    def check_length(self, n: int, param: str) -> None:
        if n == 0:
            raise InvalidRequestError(f"{param} must not be empty; give at least one token.",
                                      param)
        limit = self.max_model_len
        if n > limit:
            raise InvalidRequestError(
                f"This model's maximum context length is {limit} tokens. However, {param} has "
                f"{n} tokens. Please reduce the length of the input, or set "
                "truncate_prompt_tokens to cut it.", param)
