"""Every request limit, defined once: SamplingParams, the HTTP models and `nanovllm serve` use these.

Two kinds. Sampling limits bound one sampling request wherever it comes from (Python or HTTP);
they are module constants because a value outside them is never meaningful. Server limits bound
what one HTTP client can make the server do; an operator tunes them with `nanovllm serve` flags,
so they live in `ServerLimits`, whose defaults are the flags' defaults.
"""

from __future__ import annotations

from dataclasses import dataclass

# ---- sampling limits (SamplingParams and the OpenAPI document) -------------------------------
MAX_N = 128  # samples per prompt; vLLM has no explicit cap
MAX_LOGPROBS = 20  # top-N logprobs per token: vLLM's default max_logprobs
MAX_SEED = 2**63 - 1
MAX_PRIORITY = 2**63 - 1  # |priority|: a 64-bit int, as vLLM's clients send
PENALTY_RANGE = (-2.0, 2.0)  # presence and frequency penalty, OpenAI's range
MAX_REPETITION_PENALTY = 100.0  # above this every seen token is as good as banned
LOGIT_BIAS_RANGE = (-100.0, 100.0)  # OpenAI's; the server clamps, SamplingParams refuses
MAX_LOGIT_BIAS_ENTRIES = 300  # OpenAI's cap
# OpenAI allows 4 stop strings and vLLM any number; clients written for vLLM pass a few more
# (role markers, several newlines), and the per-step cost is a window of MAX_STOP_STRING_CHARS.
MAX_STOP_STRINGS = 16
MAX_STOP_STRING_CHARS = 256
MAX_STOP_TOKEN_IDS = 128
# allowed_token_ids may list a whole vocabulary (GPT-2's has 50,257 tokens); a step masks the
# row once, whatever the length.
MAX_ALLOWED_TOKEN_IDS = 65_536
TRUNCATION_SIDES = ("left", "right")  # truncate_prompt_tokens keeps the end, or the start
# Beam search: a request of width k runs k sequences and scores 2k candidates per beam each
# step, so both bound its cost. vLLM caps neither; 16 beams is past where transformers' users
# go, and 512 new tokens is half of GPT-2's context (the KV pool check bounds the rest).
MAX_BEAM_WIDTH = 16
MAX_BEAM_TOKENS = 512
# |length_penalty| beyond this makes every score 0 or infinite for any but the shortest beams.
MAX_LENGTH_PENALTY = 10.0

# ---- tool calling and chat templates (the chat request's fields) ------------------------------
MAX_TOOLS = 128  # OpenAI's cap on `tools`
MAX_TOOL_SCHEMA_CHARS = 64_000  # one tool's `parameters` as JSON text: it may become a grammar
MAX_TOOLS_CHARS = 512_000  # all of `tools` as JSON text, rendered into every prompt
MAX_CHAT_TEMPLATE_KWARGS_CHARS = 16_000  # `chat_template_kwargs` as JSON text

# ---- structured outputs (a model's GrammarCompiler, its runner's StartMatchers) ---------------
# Compiled grammars a model keeps, and matchers at their start its runner keeps, least recently
# used evicted first: an agent sends the same tools (so the same tool-call grammar) on every
# turn. Each holds its grammar's text, at most about MAX_TOOLS_CHARS for a tool-call grammar.
MAX_CACHED_GRAMMARS = 32

# ---- speculative decoding (speculative_config, checked at start-up) ---------------------------
# Proposals per step and sequence: each is one more query row of the target's step; past a few
# the chance that all agree is small on any model, and the rejection sampler's per-row work grows.
MAX_NUM_SPECULATIVE_TOKENS = 16
# N-gram lookup: the longest suffix matched (prompt_lookup_max) bounds a proposal's search cost.
MAX_PROMPT_LOOKUP = 32


# ---- server limits (flags of `nanovllm serve`) ------------------------------------------------
@dataclass(frozen=True, slots=True)
class ServerLimits:
    """What one HTTP request or client may ask of the server; the defaults are the flags'."""

    # The largest request that can run on GPT-2's 1,024-token context is well below this: 64
    # prompts of 1,024 ids ("50256," is 6 bytes) is ~400 KB, one full-context text prompt at
    # worst (\uXXXX escapes) ~800 KB. Larger bodies are refused before they are read.
    max_request_body_bytes: int = 2 * 1024 * 1024
    max_prompts_per_request: int = 64
    # Texts one embeddings, score or rerank request may send (inputs, pairs, documents):
    # OpenAI's embeddings API takes up to 2,048 inputs. Each is a whole sequence of one step
    # at most, computed once.
    max_pooling_inputs_per_request: int = 2048
    max_sequences_per_request: int = 256  # prompts x n: one request's share of the batch
    # Tokens with logprobs in one response (prompts x n x (echoed prompt + max_tokens)) x
    # (1 + logprobs): each entry is ~30 bytes of JSON, so this bounds a response near 6 MB.
    max_logprob_entries_per_response: int = 200_000
    limit_concurrency: int = 1024  # open connections + tasks; more are answered 503
    # uvicorn's default of 5 s closed reused connections whenever a request took the event loop
    # for longer; nothing blocks the loop now, and a longer idle timeout is kinder to clients
    # that pool connections.
    timeout_keep_alive: int = 30
    # POST /v1/responses with store (OpenAI's default): kept in memory for previous_response_id
    # and GET /v1/responses/{id}, oldest evicted first once either bound is passed.
    max_stored_responses: int = 1024
    max_stored_response_bytes: int = 256 * 1024 * 1024


FLAG_HELP = {
    "max_request_body_bytes": "refuse larger request bodies with 413, before reading them",
    "max_prompts_per_request": "prompts in one completions request, at most",
    "max_pooling_inputs_per_request": "texts in one embeddings, score or rerank request "
                                      "(inputs, pairs, documents), at most",
    "max_sequences_per_request": "prompts x n in one completions request, at most",
    "max_logprob_entries_per_response": "tokens x (1 + logprobs) one response may carry "
                                        "(echo and logprobs make large responses)",
    "limit_concurrency": "open connections and tasks, at most; more are answered 503 "
                         "(kept below the open-file limit)",
    "timeout_keep_alive": "seconds an idle keep-alive connection stays open",
    "max_stored_responses": "stored /v1/responses kept in memory, at most; the oldest are "
                            "evicted first",
    "max_stored_response_bytes": "bytes of stored /v1/responses (their context and answer "
                                 "as JSON) kept in memory, at most",
}
