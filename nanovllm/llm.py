"""The offline entry points: `LLM(model).generate(prompts, SamplingParams(...))`,
`LLM(model).chat(messages, SamplingParams(...), tools=...)` and
`LLM(model).beam_search(prompts, BeamSearchParams(...))`."""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Sequence as Seq

from tqdm.auto import tqdm

from nanovllm.beam_search import beam_search_output
from nanovllm.chat_template import checkpoint_template, template_messages
from nanovllm.config import EngineConfig
from nanovllm.engine import LLMEngine
from nanovllm.input_processor import is_single_prompt
from nanovllm.values.beam_search_params import BeamSearchParams
from nanovllm.values.errors import QueueFullError
from nanovllm.values.inputs import PromptType
from nanovllm.values.outputs import BeamSearchOutput, RequestOutput
from nanovllm.values.sampling_params import SamplingParams


class LLM:
    def __init__(self, model: str, **engine_options):
        self.engine = LLMEngine(EngineConfig(model=model, **engine_options))
        self._request_ids = itertools.count()

    def generate(self, prompts: PromptType | Seq[PromptType],
                 sampling_params: SamplingParams | Seq[SamplingParams] | None = None,
                 use_tqdm: bool = True) -> list[RequestOutput]:
        """Runs every prompt to completion, batched continuously; outputs in input order.

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
        return self._run_all(prompts, params, use_tqdm)

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
        nanovllm.server.tool_calls'). A conversation the template cannot render is a ValueError."""
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
        outputs = self._run_all(prompts, [params] * len(prompts), use_tqdm)
        return [beam_search_output(out, params.length_penalty) for out in outputs]

    def _run_all(self, prompts: Seq[PromptType], params: Seq[SamplingParams | BeamSearchParams],
                 use_tqdm: bool) -> list[RequestOutput]:
        ids = [str(next(self._request_ids)) for _ in prompts]  # numbered across calls, as in vLLM
        try:
            results = self._run(deque(zip(ids, prompts, params)), set(ids), use_tqdm)
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
            rid, prompt, params = pending[0]
            processor = self.engine.processor  # outputs are read when finished: final_only
            try:
                self.engine.add(processor.process_beam(rid, prompt, params)
                                if isinstance(params, BeamSearchParams)
                                else processor.process(rid, prompt, params, final_only=True))
            except QueueFullError:
                return
            pending.popleft()


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
