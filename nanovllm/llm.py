"""The offline entry points: `LLM(model).generate(prompts, SamplingParams(...))`,
`LLM(model).chat(messages, SamplingParams(...), tools=...)`,
`LLM(model).beam_search(prompts, BeamSearchParams(...))`, and for pooling models (an encoder,
or a decoder started with `runner="pooling"`) `LLM(model).embed(prompts)` and
`LLM(model).score(text_1, text_2)`, as vLLM's."""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable
from collections.abc import Sequence as Seq
from dataclasses import replace
from functools import partial

import numpy as np
from tqdm.auto import tqdm

from nanovllm.beam_search import beam_search_output
from nanovllm.chat_template import checkpoint_template, template_messages
from nanovllm.config import EngineConfig
from nanovllm.engine import LLMEngine
from nanovllm.input_processor import is_single_prompt
from nanovllm.pooling_input import PoolingInput
from nanovllm.values.beam_search_params import BeamSearchParams
from nanovllm.values.errors import InvalidRequestError, QueueFullError
from nanovllm.values.inputs import PromptType
from nanovllm.values.lora_request import LoRARequest
from nanovllm.values.outputs import (
    BeamSearchOutput,
    EmbeddingOutput,
    EmbeddingRequestOutput,
    RequestOutput,
    ScoringOutput,
    ScoringRequestOutput,
)
from nanovllm.values.pooling_params import PoolingParams
from nanovllm.values.request import EngineRequest
from nanovllm.values.sampling_params import SamplingParams


class LLM:
    def __init__(self, model: str, **engine_options):
        self.engine = LLMEngine(EngineConfig(model=model, **engine_options))
        self._request_ids = itertools.count()

    def generate(self, prompts: PromptType | Seq[PromptType],
                 sampling_params: SamplingParams | Seq[SamplingParams] | None = None,
                 use_tqdm: bool = True,
                 lora_request: LoRARequest | Seq[LoRARequest | None] | None = None,
                 priority: Seq[int] | None = None) -> list[RequestOutput]:
        """Runs every prompt to completion, batched continuously; outputs in input order.
        `lora_request` (one for all prompts, or one or None per prompt) runs them through LoRA
        adapters, each loaded on first use (needs `enable_lora`). `priority`: one per prompt,
        lower first (only with scheduling_policy="priority").

        All or nothing: if a prompt is rejected, or the run is interrupted (Ctrl-C), every
        request of this call is withdrawn from the engine.
        """
        if is_single_prompt(prompts):
            prompts = [prompts]
        params = sampling_params if sampling_params is not None else SamplingParams()
        if isinstance(params, SamplingParams):
            params = [params] * len(prompts)
        if len(params) != len(prompts):
            raise ValueError(f"got {len(params)} sampling params for {len(prompts)} prompts")
        loras = (list(lora_request) if isinstance(lora_request, list | tuple)
                 else [lora_request] * len(prompts))
        if len(loras) != len(prompts):
            raise ValueError(f"got {len(loras)} lora requests for {len(prompts)} prompts")
        priority = [0] * len(prompts) if priority is None else list(priority)
        if len(priority) != len(prompts):
            raise ValueError(f"got {len(priority)} priorities for {len(prompts)} prompts")
        for lora in {lora for lora in loras if lora is not None}:
            self.engine.add_lora(lora)
        return self._run_all([partial(self._process, prompt=p, params=sp, lora=lora,
                                      priority=rank)
                              for p, sp, lora, rank in zip(prompts, params, loras, priority)],
                             use_tqdm)

    def _process(self, request_id: str, prompt: PromptType, params: SamplingParams,
                 lora: LoRARequest | None, priority: int) -> EngineRequest:
        """A checked request, read only once finished (final_only), with its adapter's id."""
        request = self.engine.processor.process(request_id, prompt, params, final_only=True,
                                                priority=priority)
        return request if lora is None else replace(request, adapter_id=lora.lora_int_id)

    def chat(self, messages: list[dict] | list[list[dict]],
             sampling_params: SamplingParams | Seq[SamplingParams] | None = None,
             use_tqdm: bool = True, chat_template: str | None = None,
             add_generation_prompt: bool = True, continue_final_message: bool = False,
             tools: list[dict] | None = None,
             chat_template_kwargs: dict | None = None) -> list[RequestOutput]:
        """vLLM's LLM.chat: each conversation (one, or a list of them) rendered by the chat
        template (`chat_template`, else the checkpoint's own) with `tools` and
        `chat_template_kwargs`, as the server's chat completions render them, then generated.
        The outputs are the model's text; reading calls out of it is the server's (or
        nanovllm.server.chat.tool_calls'). A conversation the template cannot render is a ValueError."""
        self.engine.processor.check_generates()
        tokenizer = self.engine.tokenizer
        template = checkpoint_template(tokenizer.model_dir, chat_template,
                                       tokenizer.decode_token(tokenizer.eos_token_id))
        if template is None:
            raise ValueError("this checkpoint has no chat template: pass chat_template=...")
        conversations = [messages] if not messages or isinstance(messages[0], dict) else messages
        extra = {**(chat_template_kwargs or {}), "tools": tools or None, "documents": None}
        prompts = []
        for conversation in conversations:
            text = template.render(template_messages(conversation), add_generation_prompt, extra)
            if continue_final_message:  # end right after the last message's text
                final = template_messages(conversation)[-1]["content"].strip()
                text = text[:text.rfind(final) + len(final)] if final in text else text
            prompts.append({"prompt_token_ids": tokenizer.encode(text, add_special_tokens=False)})
        return self.generate(prompts, sampling_params, use_tqdm)

    def beam_search(self, prompts: PromptType | Seq[PromptType], params: BeamSearchParams,
                    use_tqdm: bool = False) -> list[BeamSearchOutput]:
        """Beam search over every prompt (vLLM's method): per prompt its `beam_width` beams,
        best first. The beams run in the engine's steps, batched with everything else."""
        if is_single_prompt(prompts):
            prompts = [prompts]
        outputs = self._run_all([partial(self.engine.processor.process_beam, prompt=p, beam=params)
                                 for p in prompts], use_tqdm)
        return [beam_search_output(out, params.length_penalty) for out in outputs]

    def embed(self, prompts: PromptType | Seq[PromptType], *,
              truncate_prompt_tokens: int | None = None, use_tqdm: bool = True,
              pooling_params: PoolingParams | None = None) -> list[EmbeddingRequestOutput]:
        """One embedding per prompt (text or token ids), pooled as the checkpoint says; in
        input order. Many are batched into each step."""
        if is_single_prompt(prompts):
            prompts = [prompts]
        params = self._pooling_params(pooling_params, "embed", truncate_prompt_tokens)
        pooling = self._pooling_input()
        outputs = self._run_all([partial(pooling.embed, prompt=p, params=params, param="prompt")
                                 for p in prompts], use_tqdm)
        return [EmbeddingRequestOutput(o.request_id, EmbeddingOutput(o.outputs.data.tolist()),
                                       o.prompt_token_ids) for o in outputs]

    def score(self, text_1: str | Seq[str], text_2: str | Seq[str], *,
              truncate_prompt_tokens: int | None = None, use_tqdm: bool = True,
              pooling_params: PoolingParams | None = None) -> list[ScoringRequestOutput]:
        """How well each text_2 answers its text_1, as vLLM's: one text_1 against each text_2,
        or the two lists pairwise. A cross-encoder reads each pair as one sequence (its score
        is `CrossEncoder.predict`'s); an embedding model scores the cosine similarity of the
        two texts' embeddings."""
        firsts = [text_1] if isinstance(text_1, str) else list(text_1)
        seconds = [text_2] if isinstance(text_2, str) else list(text_2)
        if len(firsts) == 1:
            firsts = firsts * len(seconds)
        if len(firsts) != len(seconds) or not seconds:
            raise ValueError(f"score takes one text_1 or as many as text_2: got {len(firsts)} "
                             f"and {len(seconds)}")
        pooling = self._pooling_input()
        if not pooling.is_cross_encoder:
            vectors = self.embed([*firsts, *seconds], truncate_prompt_tokens=truncate_prompt_tokens,
                                 use_tqdm=use_tqdm, pooling_params=pooling_params)
            n = len(firsts)
            return [ScoringRequestOutput(a.request_id, ScoringOutput(cosine(
                a.outputs.embedding, b.outputs.embedding)), a.prompt_token_ids + b.prompt_token_ids)
                for a, b in zip(vectors[:n], vectors[n:])]
        params = self._pooling_params(pooling_params, "score", truncate_prompt_tokens)
        outputs = self._run_all([partial(pooling.pair, first=a, second=b, params=params)
                                 for a, b in zip(firsts, seconds)], use_tqdm)
        return [ScoringRequestOutput(o.request_id, ScoringOutput(float(o.outputs.data[0])),
                                     o.prompt_token_ids) for o in outputs]

    def _pooling_input(self) -> PoolingInput:
        if self.engine.processor.pooling is None:
            raise InvalidRequestError(
                f"{self.engine.architecture} generates text (LLM.generate, LLM.chat); it makes "
                "embeddings when started with runner='pooling'", "model")
        return self.engine.processor.pooling

    @staticmethod
    def _pooling_params(params: PoolingParams | None, task: str,
                        truncate_prompt_tokens: int | None) -> PoolingParams:
        params = params or PoolingParams()
        return replace(params, task=task, truncate_prompt_tokens=(
            truncate_prompt_tokens if truncate_prompt_tokens is not None
            else params.truncate_prompt_tokens))

    def _run_all(self, requests: list[Callable[[str], EngineRequest]], use_tqdm: bool) -> list:
        """Runs every request (each a function making it, checked, from its request id) to
        completion; their final outputs in order."""
        ids = [str(next(self._request_ids)) for _ in requests]  # numbered across calls, as in vLLM
        try:
            results = self._run(deque(zip(ids, requests)), set(ids), use_tqdm)
        finally:
            self.engine.abort_request(ids)  # a no-op for the ids that finished
        return [results[rid] for rid in ids]

    def _run(self, pending: deque, ids: set[str], use_tqdm: bool) -> dict[str, RequestOutput]:
        engine, results, rates = self.engine, {}, _Throughput()
        with tqdm(total=len(ids), desc="Generating", disable=not use_tqdm,
                  dynamic_ncols=True) as bar:
            while len(results) < len(ids):
                self._add_while_room(pending)
                if not engine.has_unfinished_requests():
                    break
                for out in engine.step():
                    if out.finished and out.request_id in ids:
                        results[out.request_id] = out
                        bar.update(1)
                rates.add(engine.last_step)
                bar.set_postfix_str(str(rates), refresh=False)
        return results

    def _add_while_room(self, pending: deque) -> None:
        """Hands the engine as many pending requests as its waiting queue takes; the rest wait
        here for a later step (an idle engine always takes one: n is validated against it)."""
        while pending:
            rid, make = pending[0]
            try:
                self.engine.add(make(rid))
            except QueueFullError:
                return
            pending.popleft()


def cosine(a: list[float], b: list[float]) -> float:
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return float(a @ b / max(float(np.linalg.norm(a) * np.linalg.norm(b)), 1e-12))


class _Throughput:
    """Prefill tok/s over the steps that prefilled; decode tok/s over the steps that only decoded."""

    def __init__(self):
        self.prefill_tokens = self.decode_tokens = 0
        self.prefill_seconds = self.decode_seconds = 0.0

    def add(self, step) -> None:
        if step.num_prefill_tokens:
            self.prefill_tokens += step.num_prefill_tokens
            self.prefill_seconds += step.seconds
        else:
            self.decode_tokens += step.num_decode_tokens
            self.decode_seconds += step.seconds

    def __str__(self) -> str:
        prefill = self.prefill_tokens / self.prefill_seconds if self.prefill_seconds else 0.0
        decode = self.decode_tokens / self.decode_seconds if self.decode_seconds else 0.0
        return f"prefill {prefill:,.0f} tok/s, decode {decode:,.0f} tok/s"
