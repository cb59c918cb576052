"""`nanovllm bench prefix-cache-dir`: time to first token of a long shared prefix after a
restart, read back from a prefix cache directory, against computing it again.

Each round starts engines afresh (an empty KV pool: a restart), one with the directory the
first engine filled and one without it, and times one request each (after a short one): the
shared prefix plus a question never seen before. Rounds alternate the two, so both see the same machine load; the
first token of both must agree (greedy). By default the model is GPT-2 124M's shapes with random
weights and a position table long enough for the prompt (GPT-2's own stops at 1,024).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from nanovllm.scripts.bench_utils import describe_environment, environment, render_table


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None,
                        help="checkpoint directory (default: GPT-2 124M's shapes, random weights)")
    parser.add_argument("--prefix-len", type=int, default=2000, help="shared prefix, in tokens")
    parser.add_argument("--question-len", type=int, default=32,
                        help="tokens after the prefix, new in every request")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", default=None,
                        help="the prefix cache directory (default: a temporary one)")
    parser.add_argument("--kv-cache-dtype", default="auto", choices=("auto", "float16"))


def run(args: argparse.Namespace) -> int:
    from nanovllm import EngineConfig, LLMEngine, SamplingParams
    from nanovllm.model import write_dummy_checkpoint

    if args.prefix_len < 16 or args.question_len < 1 or args.rounds < 1:
        raise ValueError("--prefix-len must be at least 16, --question-len and --rounds positive")
    total = args.prefix_len + args.question_len + 1
    env = environment()  # the load average before the benchmark adds its own
    with tempfile.TemporaryDirectory() as scratch:
        model = args.model or str(write_dummy_checkpoint(
            Path(scratch, "model"), "gpt2", n_positions=max(1024, -(-total // 1024) * 1024)))
        directory = args.dir or str(Path(scratch, "kv"))
        blocks = -(-total // 16) + 1

        def engine(**options) -> LLMEngine:
            return LLMEngine(EngineConfig(model, num_kv_blocks=blocks,
                                          kv_cache_dtype=args.kv_cache_dtype, **options))

        first = engine(prefix_cache_dir=directory)  # fills the directory
        rng = np.random.default_rng(0)
        vocab = min(50000, first.vocab_size)
        prefix = rng.integers(0, vocab, args.prefix_len).tolist()
        params = SamplingParams(temperature=0.0, max_tokens=1)
        first_token(first, prefix + [1], params)
        first.block_manager.lower_tier.store.flush()
        stored = first.block_manager.lower_tier.stats.bytes_written
        del first
        times: dict[str, list[float]] = {"computed": [], "from disk": []}
        for r in range(args.rounds):
            question = rng.integers(0, vocab, args.question_len).tolist()
            tokens = {}
            for name, options in (("computed", {}), ("from disk", {"prefix_cache_dir": directory})):
                fresh = engine(**options)  # a restart: nothing in memory
                # A first short request, so that both time the prefix, not a first step's setup.
                first_token(fresh, rng.integers(0, vocab, 64).tolist(), params)
                seconds, tokens[name] = first_token(fresh, prefix + question, params)
                times[name].append(seconds)
            if tokens["computed"] != tokens["from disk"]:
                raise AssertionError(f"round {r}: the first tokens differ: {tokens}")
    recomputed, read = (statistics.median(times[k]) for k in ("computed", "from disk"))
    print(describe_environment(env))
    print(f"model: {args.model or 'GPT-2 124M shapes, random weights'}; kv_cache_dtype "
          f"{args.kv_cache_dtype}; {args.prefix_len}-token shared prefix + "
          f"{args.question_len}-token new question; {stored / 2**20:.0f} MiB of blocks on disk")
    print(render_table([["first token after a restart", f"median of {args.rounds} (s)", "x"],
                        ["prefix computed", f"{recomputed:.3f}", "1.0"],
                        ["prefix read from disk", f"{read:.3f}", f"{recomputed / read:.1f}"]]))
    return 0


def first_token(engine, prompt: list[int], params) -> tuple[float, int]:
    """Seconds from submitting `prompt` to its first token, and that token."""
    start = time.perf_counter()
    engine.add_request("bench", prompt, params)
    while True:
        for out in engine.step():
            if out.outputs[0].token_ids:
                seconds = time.perf_counter() - start
                while engine.has_unfinished_requests():
                    engine.step()
                return seconds, out.outputs[0].token_ids[0]
