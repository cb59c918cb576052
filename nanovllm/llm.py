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
        rates = _Throughput()
        with tqdm(total=len(prompts), desc="Generating", disable=not use_tqdm,
                  dynamic_ncols=True) as bar:
            while engine.has_unfinished_requests():
                for out in engine.step():
                    if out.finished:
                        results[out.request_id] = out
                        bar.update(1)
                rates.add(engine.last_step)
                bar.set_postfix_str(str(rates), refresh=False)
        return [results[str(i)] for i in range(len(prompts))]


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
