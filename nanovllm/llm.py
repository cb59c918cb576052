"""The offline entry point: `LLM(model).generate(prompts, SamplingParams(...))`."""

from __future__ import annotations

from collections.abc import Sequence as Seq

from tqdm.auto import tqdm

from nanovllm.config import EngineConfig
from nanovllm.engine import LLMEngine
from nanovllm.outputs import RequestOutput
from nanovllm.sampling_params import SamplingParams

Prompt = str | list[int]


class LLM:
    def __init__(self, model: str, **engine_options):
        self.engine = LLMEngine(EngineConfig(model=model, **engine_options))

    def generate(self, prompts: Prompt | Seq[Prompt],
                 sampling_params: SamplingParams | Seq[SamplingParams] | None = None,
                 use_tqdm: bool = True) -> list[RequestOutput]:
        """Runs every prompt to completion, batched continuously; outputs in input order."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        params = sampling_params if sampling_params is not None else SamplingParams()
        if isinstance(params, SamplingParams):
            params = [params] * len(prompts)
        if len(params) != len(prompts):
            raise ValueError(f"got {len(params)} sampling params for {len(prompts)} prompts")
        engine = self.engine
        try:
            for i, (prompt, p) in enumerate(zip(prompts, params)):
                engine.add_request(str(i), prompt, p)
        except ValueError:
            engine.abort_request([str(j) for j in range(len(prompts))])  # all or nothing
            raise
        # Only our own ids are in flight: generate() is not meant to share the engine.
        results: dict[str, RequestOutput] = {}
        with tqdm(total=len(prompts), desc="Generating", disable=not use_tqdm,
                  dynamic_ncols=True) as bar:
            while engine.has_unfinished_requests():
                for out in engine.step():
                    if out.finished:
                        results[out.request_id] = out
                        bar.update(1)
                step = engine.last_step
                if step.seconds:
                    bar.set_postfix_str(f"prefill {step.num_prefill_tokens / step.seconds:,.0f} tok/s, "
                                        f"decode {step.num_decode_tokens / step.seconds:,.0f} tok/s",
                                        refresh=False)
        return [results[str(i)] for i in range(len(prompts))]
