"""The engine side of the offline benchmarks (`benchmark.py`, `bench_vs_llama_cpp.py`): a cell
of work, one timed run of it through an LLMEngine, and the prompts it runs."""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True, slots=True)
class Cell:
    batch_size: int
    input_len: int | None  # None: the dataset's prompts, whatever their lengths
    output_len: int

    def __str__(self) -> str:
        prompt = "dataset" if self.input_len is None else self.input_len
        return f"{self.batch_size} x {prompt} -> {self.output_len}"


@dataclass(slots=True)
class Run:
    """One timed run of a cell. decode_s is None when output_len is 1 (nothing to decode)."""
    prefill_s: float
    decode_s: float | None
    prompt_tokens: int
    decode_tokens: int
    preemptions: int = 0

    @property
    def prefill_tps(self) -> float:
        return self.prompt_tokens / self.prefill_s

    @property
    def decode_tps(self) -> float | None:
        return self.decode_tokens / self.decode_s if self.decode_s else None


def make_engine(args: argparse.Namespace, **options):
    """The engine under test (random weights for a preset the hub cannot deliver, by default);
    `options` override the command line's (the precisions of --compare precisions)."""
    from nanovllm import EngineConfig, LLMEngine

    return LLMEngine(EngineConfig.from_cli_args(args.model, argparse.Namespace(**{
        **vars(args), **options})))


def run_ours(engine, prompts: list[list[int]], output_len: int,
             outputs: list[list[int]] | None = None, temperature: float = 0.0,
             adapter_ids: list[int] | None = None) -> Run:
    """One timed run, greedy or sampled at `temperature`; `outputs`, if given, receives each
    request's tokens in prompt order; `adapter_ids`, each request's loaded LoRA (0: none)."""
    from dataclasses import replace

    from nanovllm import SamplingParams

    params = SamplingParams(max_tokens=output_len, ignore_eos=True, temperature=temperature)
    ids = [f"bench-{time.monotonic_ns()}-{i}" for i in range(len(prompts))]
    preempted = engine.get_stats().num_preemptions_total
    waiting_first, generated, finished = set(ids), 0, {}
    t0 = time.perf_counter()
    for rid, prompt, adapter_id in zip(ids, prompts, adapter_ids or [0] * len(prompts)):
        engine.add(replace(engine.processor.process(rid, prompt, params), adapter_id=adapter_id))
    t_first = None
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.outputs[0].token_ids:
                waiting_first.discard(out.request_id)
            if out.finished:
                generated += len(out.outputs[0].token_ids)
                finished[out.request_id] = out.outputs[0].token_ids
        if t_first is None and not waiting_first:
            t_first = time.perf_counter()
    t_end = time.perf_counter()
    expected = len(prompts) * output_len
    if generated != expected:
        raise RuntimeError(f"the engine generated {generated} tokens, expected {expected}")
    if outputs is not None:
        outputs += [finished[rid] for rid in ids]
    decode = t_end - t_first if output_len > 1 else None
    return Run(t_first - t0, decode, sum(map(len, prompts)),
               len(prompts) * (output_len - 1), engine.get_stats().num_preemptions_total - preempted)


class Prompts:
    """A cell's prompts: fresh random ids every time (the prefix cache never hits), or for a
    dataset cell the dataset's next prompts, in file order, from the top again at its end."""

    def __init__(self, rng: np.random.Generator, vocab_size: int,
                 dataset: list[list[int]] | None = None) -> None:
        self.rng, self.vocab_size, self.dataset, self.next = rng, vocab_size, dataset or [], 0

    def take(self, cell: Cell) -> list[list[int]]:
        if cell.input_len is None:
            ids = [self.dataset[(self.next + i) % len(self.dataset)]
                   for i in range(cell.batch_size)]
            self.next += cell.batch_size
            return ids
        # The last id is GPT-2's <|endoftext|>: kept out of the prompts.
        return self.rng.integers(0, self.vocab_size - 1, (cell.batch_size, cell.input_len)).tolist()
