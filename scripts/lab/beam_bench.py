"""Beam search throughput against transformers', and the KV blocks beams share:
`python -m nanovllm.scripts.lab.beam_bench [--prompts 8] [--prompt-len 64] [--tokens 32]
[--repeat 3]`.

Both sides run in this process on the same random-weight checkpoint with GPT-2 124M's shapes,
the same token-id prompts (new ones for each run, so that our prefix cache never serves a
previous run's prompt) and beam widths, EOS kept out of play on our side (ignore_eos) and
unlikely on theirs (random weights): transformers' `generate(num_beams=k,
num_return_sequences=k, do_sample=False)` one prompt batch at a time, ours
`LLM.beam_search` over all prompts at once; each side is warmed up once first. The times are
each side's median over --repeat runs, A and B alternating. Then one beam-8 request over a long
prompt, stepped alone: the KV blocks it holds at its peak, against 8 sequences of the same
length (n=8 with and without the prefix cache, and 8 with nothing shared). Timings depend on the machine and what else runs.

The thread pools are configured before numpy and torch load, as the `nanovllm` command and
`scripts/benchmark.py` do (both sides get the settings): without it, numpy's OpenBLAS workers
spin long after each GEMM and take a core from numba's kernels (and the other way round), which
slows every step that alternates the two (a prefill) far more than the engine is slowed when
it is started as shipped.
"""

from __future__ import annotations

import argparse
import time

from nanovllm.model.platform.threads import configure_thread_pools

configure_thread_pools()  # before numpy and torch load: see model/platform/threads.py

# isort: split
import numpy as np  # noqa: E402

from nanovllm.scripts.bench_utils import describe_environment, environment, render_table  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--widths", default="4,8")
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs of each side per width, alternating; the medians are compared")
    ap.add_argument("--long-prompt", type=int, default=512,
                    help="prompt tokens of the block-sharing table; 0 skips it")
    args = ap.parse_args()

    import torch
    from transformers import GPT2LMHeadModel

    from nanovllm import LLM
    from nanovllm.model.checkpoint.dummy import dummy_checkpoint_dir
    from nanovllm.values.beam_search_params import BeamSearchParams

    ckpt = dummy_checkpoint_dir("gpt2")
    env = environment()
    print(describe_environment(env))
    rng = np.random.default_rng(0)
    llm = LLM(str(ckpt), kv_cache_memory_bytes=2 << 30)
    hf = GPT2LMHeadModel.from_pretrained(ckpt, dtype=torch.float32).eval()
    warm_up = rng.integers(0, 50000, (1, args.prompt_len)).tolist()
    llm.beam_search(warm_up, BeamSearchParams(2, 2, ignore_eos=True))
    generate(hf, warm_up, 2, 2)
    rows = [["width", "beam tokens", "nanovllm s", "transformers s", "ratio"]]
    for width in (int(w) for w in args.widths.split(",")):
        ours, theirs = [], []
        for _ in range(args.repeat):
            # Prompts of their own for each run: our prefix cache must not serve a previous
            # run's prompt blocks (transformers has none).
            prompts = rng.integers(0, 50000, (args.prompts, args.prompt_len)).tolist()
            t0 = time.perf_counter()
            llm.beam_search(prompts, BeamSearchParams(width, args.tokens, ignore_eos=True))
            ours.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            generate(hf, prompts, width, args.tokens)
            theirs.append(time.perf_counter() - t0)
        ours_s, theirs_s = float(np.median(ours)), float(np.median(theirs))
        rows.append([str(width), str(args.prompts * width * args.tokens), f"{ours_s:.2f}",
                     f"{theirs_s:.2f}", f"{theirs_s / ours_s:.2f}x"])
    print(render_table(rows))
    if args.long_prompt > 0:
        print()
        print(render_table(block_rows(llm, args.long_prompt, args.tokens)))


def generate(hf, prompts: list[list[int]], width: int, tokens: int) -> None:
    """transformers' beam search over `prompts`, `tokens` new tokens each (EOS not ending it)."""
    import torch

    with torch.inference_mode():
        ids = torch.tensor(prompts)
        hf.generate(ids, attention_mask=torch.ones_like(ids), num_beams=width,
                    num_return_sequences=width, do_sample=False, early_stopping=False,
                    max_new_tokens=tokens, min_new_tokens=tokens,
                    pad_token_id=hf.config.eos_token_id)


def block_rows(llm, prompt_len: int, tokens: int) -> list[list[str]]:
    """Peak KV blocks of one beam-8 request over a `prompt_len` prompt, and of 8 samples."""
    from nanovllm import SamplingParams
    from nanovllm.values.beam_search_params import BeamSearchParams

    engine = llm.engine
    prompt = np.random.default_rng(1).integers(0, 50000, prompt_len).tolist()
    bs = engine.block_manager.block_size
    rows = [["request", f"peak KV blocks ({bs} tokens each)"]]
    for name, request in [
        ("beam search, width 8", engine.processor.process_beam("beam", prompt,
                                                               BeamSearchParams(8, tokens, True))),
        ("n=8 samples (prefix cache shares the prompt)", engine.processor.process(
            "n8", prompt, SamplingParams(n=8, max_tokens=tokens, ignore_eos=True)))]:
        copies = engine.block_manager.num_copies_total
        engine.add(request)
        peak = 0
        while engine.has_unfinished_requests():
            engine.step()
            bm = engine.block_manager
            peak = max(peak, bm.num_blocks - bm.num_free_blocks)
        extra = f", {engine.block_manager.num_copies_total - copies} copied on write" if (
            request.beam) else ""
        rows.append([name, f"{peak}{extra}"])
    rows.append(["8 independent sequences", str(8 * -(-(prompt_len + tokens) // bs))])
    return rows


if __name__ == "__main__":
    main()
