"""InputProcessor: a prompt and its SamplingParams in, a checked EngineRequest out, once.

The one set of rules for LLM, the server and Ray replicas on whether a request can ever run on
an engine. Every rule depends only on what is fixed when the engine starts (the tokenizer, the
vocabulary, max_model_len, the sizes of the KV pool and of the waiting queue), never on what
is running (a full queue is the engine's QueueFullError, when the request is added). So the
server processes a request on its event-loop thread while the engine thread runs steps, and
answers a bad request before it reaches the engine. A broken rule raises InvalidRequestError
naming the request field to fix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from nanovllm.beam_search import beam_blocks_needed
from nanovllm.block_manager import blocks_needed
from nanovllm.scheduling_policy import check_priority
from nanovllm.tokenizer import Tokenizer
from nanovllm.values.beam_search_params import BeamSearchParams
from nanovllm.values.errors import ContextLengthError, InvalidRequestError, quote
from nanovllm.values.inputs import PromptType
from nanovllm.values.request import EngineRequest
from nanovllm.values.sampling_params import SamplingParams


def unpack_prompt(prompt: PromptType) -> str | list[int]:
    """The text or token ids inside any accepted prompt form; ValueError for anything else."""
    if not isinstance(prompt, dict):
        return prompt
    if set(prompt) == {"prompt"} and isinstance(prompt["prompt"], str):
        return prompt["prompt"]
    if set(prompt) == {"prompt_token_ids"} and is_id_sequence(prompt["prompt_token_ids"]):
        return list(prompt["prompt_token_ids"])
    found = ", ".join(f"{key!r}: {type(value).__name__}" for key, value in prompt.items())
    raise ValueError(f"a prompt dict takes exactly one key, 'prompt' (text) or 'prompt_token_ids' "
                     f"(a list of token ids); got {{{found}}}")


def is_id_sequence(value) -> bool:
    """A list or tuple (of what are checked later to be token ids), or a 1-D integer array."""
    if isinstance(value, np.ndarray):
        return value.ndim == 1 and np.issubdtype(value.dtype, np.integer)
    return isinstance(value, list | tuple)


def is_single_prompt(prompts) -> bool:
    """True for one prompt, False for a sequence of them (a list of ints is one prompt)."""
    return isinstance(prompts, str | dict) or (
        len(prompts) > 0 and isinstance(prompts[0], int | np.integer))


def check_bias_ids(ids: Sequence[int], vocab_size: int) -> None:
    """logit_bias keys (ints by now) in the vocabulary; the error names every one outside."""
    bad = [t for t in ids if not 0 <= t < vocab_size]
    if bad:
        shown = ", ".join(map(str, bad[:10])) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
        raise InvalidRequestError(f"logit_bias names {len(bad)} token id(s) outside the vocabulary "
                                  f"[0, {vocab_size}): {shown}.", "logit_bias")


def check_token_ids(ids: Sequence, vocab_size: int, param: str) -> None:
    """Every id must be an integer in [0, vocab_size); `param` names the field they came in."""
    for t in ids:
        if isinstance(t, bool) or not isinstance(t, int | np.integer):
            raise InvalidRequestError(f"{param} contains {quote(t)}, which is not an integer "
                                      "token id.", param)
        if not 0 <= t < vocab_size:
            raise InvalidRequestError(f"{param} contains token id {t} outside the vocabulary "
                                      f"[0, {vocab_size}).", param)


def check_prompt_text(text: str, tokenizer: Tokenizer, max_model_len: int,
                      param: str = "prompt", truncated: bool = False) -> None:
    """Refuse, before tokenizing, a text that cannot fit the context however it tokenizes (a
    token covers at most tokenizer.max_token_chars characters; unless it is to be `truncated`,
    when the request body's own limit bounds it) or that is not Unicode text."""
    limit = (max_model_len - 1) * tokenizer.max_token_chars
    if len(text) > limit and not truncated:
        raise ContextLengthError(
            f"This model's maximum context length is {max_model_len} tokens. However, your "
            f"prompt has {len(text)} characters, more than {max_model_len - 1} tokens of at most "
            f"{tokenizer.max_token_chars} characters each can hold. Please reduce the length of "
            "the prompt.", param, limit=max_model_len, prompt_chars=len(text),
            token_chars=tokenizer.max_token_chars)
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidRequestError(f"{param} contains a lone UTF-16 surrogate at index "
                                      f"{exc.start}, which is not valid Unicode text.",
                                      param) from None


# What a generation request to a pooling model is told (HTTP and Python alike).
NOT_GENERATING = ("This model is served for embeddings and scores: it does not generate text. "
                  "Use /v1/embeddings, /v1/score or /v1/rerank (in Python: LLM.embed, "
                  "LLM.score).")


@dataclass(frozen=True, slots=True)
class InputProcessor:
    """The engine's limits, frozen at start-up, and the checks a request must pass against them."""

    tokenizer: Tokenizer  # only encode() is used: safe from any thread
    vocab_size: int  # token ids a request may use: [0, vocab_size)
    max_model_len: int
    block_size: int
    num_kv_blocks: int  # the whole KV pool
    max_waiting_seqs: int  # a request's n samples must fit in the waiting queue at once
    # A pooling model's checks (embeddings, scores): a pooling_input.PoolingInput, which builds
    # on this module's (so it is not imported here). Such a model generates nothing.
    pooling: object | None = None
    scheduling_policy: str = "fcfs"  # which `priority` values a request may have

    def process(self, request_id: str, prompt: PromptType, params: SamplingParams, *,
                final_only: bool = False, add_special_tokens: bool = True,
                priority: int = 0) -> EngineRequest:
        """The request, tokenized and checked, if it can ever run; else InvalidRequestError.
        A text prompt gets the special tokens its tokenizer adds (Llama's BOS) unless
        `add_special_tokens` is False (a rendered chat template holds them already)."""
        self.check_generates()
        priority = check_priority(self.scheduling_policy, priority)
        text = prompt.get("prompt") if isinstance(prompt, dict) else prompt
        if params.truncate_prompt_tokens is not None:  # the text may say more than was kept
            text = None
        return EngineRequest(request_id, self.check(prompt, params, add_special_tokens), params,
                             text if isinstance(text, str) else None, final_only,
                             priority=priority)

    def check_generates(self) -> None:
        """An InvalidRequestError (about `model`) if this model pools instead of generating."""
        if self.pooling is not None:
            raise InvalidRequestError(NOT_GENERATING, "model")

    def process_beam(self, request_id: str, prompt: PromptType, beam: BeamSearchParams, *,
                     final_only: bool = True, priority: int = 0) -> EngineRequest:
        """A beam search, tokenized and checked, if its k beams can ever run at once."""
        params = beam.sampling_params()
        request = self.process(request_id, prompt, params, final_only=final_only,
                               priority=priority)
        n_prompt = len(request.prompt_token_ids)
        needed = beam_blocks_needed(n_prompt, beam.max_tokens, beam.beam_width, self.block_size)
        if needed > self.num_kv_blocks:
            raise InvalidRequestError(
                f"a beam search of width {beam.beam_width} over {n_prompt} prompt tokens and "
                f"{beam.max_tokens} new ones may hold up to {needed} KV blocks, but the whole KV "
                f"cache has {self.num_kv_blocks}; lower max_tokens or the beam width",
                "max_tokens")
        return replace(request, beam=beam)

    def check(self, prompt: PromptType, params: SamplingParams,
              add_special_tokens: bool = True) -> list[int]:
        """The prompt's token ids, if the request can run; else InvalidRequestError."""
        if params.n > self.max_waiting_seqs:
            raise InvalidRequestError(f"n={params.n} samples can never be queued: this server "
                                      f"queues at most {self.max_waiting_seqs} sequences.", "n")
        prompt_ids = self.prompt_ids(prompt, params, add_special_tokens)
        self.check_kv_pool(len(prompt_ids), params.max_tokens)
        check_bias_ids(list(params.logit_bias), self.vocab_size)
        check_token_ids(params.stop_token_ids, self.vocab_size, "stop_token_ids")
        if params.allowed_token_ids is not None:
            check_token_ids(params.allowed_token_ids, self.vocab_size, "allowed_token_ids")
        return prompt_ids

    def prompt_ids(self, prompt: PromptType, params: SamplingParams,
                   add_special_tokens: bool = True) -> list[int]:
        """The prompt's token ids, once they are known to fit the context with `params`."""
        try:
            prompt = unpack_prompt(prompt)
        except ValueError as exc:
            raise InvalidRequestError(str(exc), "prompt") from exc
        truncate = self.truncation_length(params)
        if isinstance(prompt, str):
            check_prompt_text(prompt, self.tokenizer, self.max_model_len,
                              truncated=truncate is not None)
            ids = self.tokenizer.encode(prompt, add_special_tokens)
        else:
            ids = list(prompt)
        if truncate is not None and len(ids) > truncate:  # vLLM truncates before any check
            ids = ids[-truncate:] if params.truncation_side == "left" else ids[:truncate]
        if not ids:
            raise InvalidRequestError("The prompt must not be empty; give at least one token.", "prompt")
        self.check_context(len(ids), params.max_tokens, params.min_tokens)
        if not isinstance(prompt, str):  # after the length: a long list is refused unread
            check_token_ids(ids, self.vocab_size, "prompt")
        return [int(t) for t in ids]

    def truncation_length(self, params: SamplingParams) -> int | None:
        """How many prompt tokens truncate_prompt_tokens keeps (-1: the context length)."""
        n = params.truncate_prompt_tokens
        if n is None:
            return None
        if n > self.max_model_len:
            raise InvalidRequestError(f"truncate_prompt_tokens ({n}) must be at most this model's "
                                      f"context length of {self.max_model_len}.",
                                      "truncate_prompt_tokens")
        return self.max_model_len if n == -1 else n

    def check_context(self, n_prompt: int, max_tokens: int | None, min_tokens: int) -> None:
        """Prompt plus completion within max_model_len (vLLM's messages, and its field)."""
        limit = self.max_model_len
        numbers = {"limit": limit, "prompt_tokens": n_prompt, "max_tokens": max_tokens,
                   "min_tokens": min_tokens}
        if max_tokens is not None and n_prompt + max_tokens > limit:
            raise ContextLengthError(
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{n_prompt + max_tokens} tokens ({n_prompt} in the prompt, {max_tokens} in the "
                "completion). Please reduce the length of the prompt or completion.", "max_tokens",
                **numbers)
        if n_prompt >= limit:
            raise ContextLengthError(
                f"This model's maximum context length is {limit} tokens. However, your prompt "
                f"has {n_prompt} tokens, which leaves no room for a completion. Please reduce "
                "the length of the prompt.", "prompt", **numbers)
        if n_prompt + min_tokens > limit:  # only possible with max_tokens None (up to the limit)
            raise ContextLengthError(
                f"This model's maximum context length is {limit} tokens. However, min_tokens "
                f"{min_tokens} after a prompt of {n_prompt} tokens needs {n_prompt + min_tokens}. "
                "Please reduce min_tokens or the length of the prompt.", "min_tokens", **numbers)

    def check_kv_pool(self, n_prompt: int, max_tokens: int | None) -> None:
        """The longest the request can grow must fit in the whole KV pool, or it never could run."""
        longest = min(self.max_model_len, n_prompt + (max_tokens or self.max_model_len))
        needed = blocks_needed(longest, self.block_size)
        if needed > self.num_kv_blocks:
            raise InvalidRequestError(
                f"the request needs up to {longest} tokens of context = {needed} KV blocks, but "
                f"the whole KV cache has {self.num_kv_blocks}; lower max_tokens or start the "
                "engine with a larger KV cache (kv_cache_memory_bytes / num_kv_blocks)",
                "max_tokens")
