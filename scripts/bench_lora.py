"""`nanovllm bench offline --lora-modules NAME=PATH ...`: decode throughput with LoRA adapters
against the base model, in one engine.

Two cells, each --output-len new tokens after --input-len random prompt tokens, greedy:
a batch of 16 whose request i runs adapter i mod K (K = min(8, adapters given)), and one request
with the first adapter alone. Each rep runs the cell's prompts through the base model, then the
same prompts with the adapters (the same engine: a busy machine slows both alike);
ratio = adapters / base decode tok/s (medians).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from nanovllm.scripts.bench_engine import make_engine, run_ours
from nanovllm.scripts.bench_utils import Summary, limit_blas_threads, render_table
from nanovllm.scripts.benchmark import WARMUP_TOKENS
from nanovllm.server.lora import parse_lora_module
from nanovllm.values.lora_request import LoRARequest

BATCH, MAX_SPREAD = 16, 8  # the many-adapter cell: 16 sequences over 8 adapters


def run_lora(args: argparse.Namespace) -> int:
    limits = limit_blas_threads(args.threads)  # noqa: F841 - the limit lasts while this lives
    try:
        modules = [parse_lora_module(text) for text in args.lora_modules]
        engine = make_engine(args, enable_lora=True,
                             max_loras=max(args.max_loras, len(modules)))
        for i, (name, path, _) in enumerate(modules, 1):
            engine.add_lora(LoRARequest(name, i, path))
    except (ValueError, OSError, RuntimeError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    spread = min(MAX_SPREAD, len(modules))
    cells = {f"{BATCH} over {spread} adapters": [1 + i % spread for i in range(BATCH)],
             "1, one adapter": [1]}
    rng = np.random.default_rng(args.bench_seed)
    input_len, output_len = args.input_len[0], args.output_len[0]
    rows = []
    for label, adapters in cells.items():
        def prompts(n: int) -> list[list[int]]:
            return rng.integers(0, engine.vocab_size - 1, (n, input_len)).tolist()
        for ids in ([0] * len(adapters), adapters):  # warm-up
            run_ours(engine, prompts(len(ids)), WARMUP_TOKENS, adapter_ids=ids)
        base, adapted = [], []
        for rep in range(args.reps):
            batch = prompts(len(adapters))
            base.append(run_ours(engine, batch, output_len).decode_tps)
            adapted.append(run_ours(engine, batch, output_len, adapter_ids=adapters).decode_tps)
            print(f"  {label}  rep {rep + 1}/{args.reps}: base {base[-1]:,.1f}, adapters "
                  f"{adapted[-1]:,.1f} tok/s", file=sys.stderr, flush=True)
        b, a = Summary.of(base), Summary.of(adapted)
        rows.append([label, f"{b.median:,.1f}", f"{a.median:,.1f}", f"{a.median / b.median:.2f}"])
    print(f"{engine.architecture} from {engine.model_path}, {len(modules)} adapter(s) loaded, "
          f"{input_len} prompt tokens -> {output_len}, {args.reps} reps (decode tok/s, medians)")
    print(render_table([["batch", "base", "with adapters", "ratio"], *rows]))
    return 0
