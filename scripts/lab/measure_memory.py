"""Resident memory of a running engine against its weights and its KV pool.

Starts an engine, runs `--batch` requests (32-token prompts, 128 new tokens, EOS ignored) and
then one `--long-prompt`-token prompt, and prints the process's resident set size (VmRSS) after
each phase. The figure the project's target is about is (RSS - KV pool) / fp32 weights: what the
process holds beyond the pool it was told to allocate, in units of the model's weights.
`--quantization int8` / `--dtype bfloat16` store the weights narrower: the line "weights as
stored" gives their bytes, and RSS drops by the difference (run once per precision: freed
memory is not handed back within a process).

    python scripts/lab/measure_memory.py
    python scripts/lab/measure_memory.py --quantization int8
    python scripts/lab/measure_memory.py --model smollm2-135m --batch 16

Any architecture's preset or checkpoint; the first line also gives the KV cache's bytes per
token (2 x layers x key/value heads x head size x 4 bytes: grouped-query models hold only their
key/value heads) next to GPT-2 124M's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nanovllm.model.platform.threads import configure_thread_pools

configure_thread_pools()  # before numpy loads: see model/platform/threads.py

# isort: split
import numpy as np  # noqa: E402

from nanovllm.model.weights.precision import QUANTIZATIONS, WEIGHT_DTYPES, precision_name  # noqa: E402


def resident_mib() -> float:
    """This process's VmRSS (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status (not Linux?)")


def stored_bytes(weights) -> int:
    """Bytes of every weight array any model holds (int8 values, scales and row sums, bf16
    bits), each counted once: a tied LM head is the embedding itself."""
    from dataclasses import fields, is_dataclass

    seen: dict[int, int] = {}

    def walk(value) -> None:
        if isinstance(value, np.ndarray):
            seen[id(value)] = value.nbytes
        elif isinstance(value, list):
            for v in value:
                walk(v)
        elif is_dataclass(value):
            for f in fields(value):
                walk(getattr(value, f.name))

    walk(weights)
    return sum(seen.values())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gpt2", help="preset (random weights) or checkpoint directory")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--long-prompt", type=int, default=1000)
    p.add_argument("--dtype", choices=WEIGHT_DTYPES, default="auto")
    p.add_argument("--quantization", choices=QUANTIZATIONS, default=None)
    args = p.parse_args(argv)

    from nanovllm import LLM, SamplingParams
    from nanovllm.model import PRESETS
    from nanovllm.runner.kv_cache import kv_bytes_per_block

    llm = LLM(args.model, load_format="dummy", dtype=args.dtype, quantization=args.quantization)
    cfg = llm.engine.model_config
    weights_mib = cfg.num_params * 4 / 2**20  # fp32; a tied LM head is the embedding itself
    pool_mib = llm.engine.runner.kv_cache.nbytes / 2**20
    print(f"fp32 weights {weights_mib:.0f} MiB, KV pool {pool_mib:.0f} MiB")
    cache_dtype = llm.engine.runner.kv_cache.dtype.name
    per_token = kv_bytes_per_block(cfg, 1, cache_dtype)
    print(f"KV cache {per_token:,} bytes per token ({cfg.n_layer} layers x {cfg.num_kv_heads} "
          f"key/value heads x {cfg.head_dim}); GPT-2 124M's: "
          f"{kv_bytes_per_block(PRESETS['gpt2'], 1, cache_dtype):,}")
    stored = stored_bytes(llm.engine.runner.weights) / 2**20
    print(f"weights as stored ({precision_name(args.dtype, args.quantization)}): {stored:.2f} MiB")
    print(f"started: RSS {resident_mib():.0f} MiB")
    rng = np.random.default_rng(0)
    params = SamplingParams(temperature=0, ignore_eos=True, max_tokens=128)
    llm.generate([rng.integers(0, cfg.vocab_size, 32).tolist() for _ in range(args.batch)], params,
                 use_tqdm=False)
    print(f"after {args.batch} x 32 -> 128: RSS {resident_mib():.0f} MiB")
    long_prompt = min(args.long_prompt, cfg.n_positions - 1)
    llm.generate(rng.integers(0, cfg.vocab_size, long_prompt).tolist(),
                 SamplingParams(max_tokens=1), use_tqdm=False)
    rss = resident_mib()
    print(f"after a {long_prompt}-token prompt: RSS {rss:.0f} MiB; "
          f"(RSS - KV pool) / weights = {(rss - pool_mib) / weights_mib:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
