"""How much of a decode step is not weight GEMMs (GPT-2 or the Llama family).

Runs `batch` greedy requests (32-token prompts, EOS ignored) until their context reaches
`--context`. It then times engine steps, and in the same process the bare chain of weight
matmuls that a step of that batch must do: the four per layer and the LM head, with the same
weights and row count. The difference is attention, layer norm, GELU, sampling, scheduling,
input building and detokenizing. Steps and chains alternate, so that both see the same machine
speed (a VM's can drift within seconds); medians of `--steps` of each.

    python scripts/lab/profile_decode.py --batch 64 [--kv-cache-dtype float16] [--quantization int8]
    python scripts/lab/profile_decode.py --model FILE.gguf --load-format auto --batch 1 --roof
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

from nanovllm.model.platform.threads import configure_thread_pools

configure_thread_pools()  # before numpy loads: see model/platform/threads.py

# isort: split
import numpy as np  # noqa: E402
from numba import config  # noqa: E402

from nanovllm.config import KV_CACHE_DTYPE_CHOICES  # noqa: E402


def alternating_medians_ms(fns, reps: int) -> list[float]:
    """Runs the functions in turn `reps` times; the median time of each, in ms."""
    times = [[] for _ in fns]
    for _ in range(reps):
        for fn, spent in zip(fns, times):
            start = time.perf_counter()
            fn()
            spent.append(time.perf_counter() - start)
    return [float(np.median(spent)) * 1e3 for spent in times]


def step_matrices(weights) -> tuple[list[tuple], object]:
    """The weight matrices of a decode step: GPT-2's four per block or Llama's four per layer
    (fused q/k/v, o, fused gate/up, down), and the LM head."""
    if hasattr(weights, "blocks"):  # GPT-2
        return [(b.attn_w, b.attn_proj_w, b.fc_w, b.fc_proj_w) for b in weights.blocks], weights.wte
    return ([(layer.qkv_w, layer.o_w, layer.gate_up_w, layer.down_w) for layer in weights.layers],
            weights.lm_head)


def gemm_chain(weights, rows: int):
    """The weight matmuls of one decode step over `rows` tokens, and nothing else."""
    from nanovllm.model.layers.linear import linear

    mats, head = step_matrices(weights)
    # Each matrix's input, by its width: the model's (and attention's) width or the MLP's.
    inputs = {m.shape[1]: np.ones((rows, m.shape[1]), np.float32) for ms in mats for m in ms}

    def run():
        for ms in mats:
            for m in ms:
                linear(inputs[m.shape[1]], m)
        linear(inputs[head.shape[1]], head)
    return run


def bare_read_chain(weights):
    """The step's matrices read and nothing done with them: each matrix's arrays by numba's
    threads, a contiguous share each (`bare_read.read_split`), one parallel region a matrix
    as the products take them: the fastest those calls could stream them, with no arithmetic.
    Compiled on the way out, so that the first timed read is not its compilation. (Compiled
    only: `read_split` is LLVM IR.)"""
    from numba import get_num_threads

    from nanovllm.scripts.lab.bare_read import as_rows, read_split

    mats, head = step_matrices(weights)
    ones = np.ones(1, np.float32)
    views = [as_rows(a) for m in [*(m for ms in mats for m in ms), head]
             for a in weight_arrays(m)]

    def run():
        for view in views:
            read_split(view, get_num_threads(), ones)
    run()
    return run, sum(view.nbytes for view in views)


def print_batch_floor(engine, args: argparse.Namespace, step: float, gemm: float) -> None:
    """The shortest step of `args.batch` rows these kernels could make: its products at the
    rate they reach over `args.floor_rows` rows (each panel of weights read from memory once
    for all of them) and its attention reading each cached key and value once at the memory
    roof; the rest (norms, activations, sampling, Python) counted as nothing."""
    from nanovllm.runner.kv_cache import kv_bytes_per_block
    from nanovllm.scripts.roofs import measure_roofs

    rows = args.floor_rows
    (wide,) = alternating_medians_ms([gemm_chain(engine.runner.weights, rows)], 3)
    products = wide * args.batch / rows
    per_token = kv_bytes_per_block(engine.model_config, 1, engine.runner.kv_cache.dtype.name)
    kv_bytes = args.batch * (args.context + args.steps / 2) * per_token  # (its mean context)
    bandwidth = measure_roofs().bandwidth
    attention = kv_bytes / bandwidth * 1e3
    floor = products + attention
    print(f"products at {rows} rows' rate ({wide:.1f} ms for {rows}): {products:.1f} ms for "
          f"{args.batch} (they take {gemm:.1f}); the KV cache read once at the memory roof "
          f"({kv_bytes / 1e6:.0f} MB at {bandwidth / 1e9:.1f} GB/s): {attention:.1f} ms; a step "
          f"takes at least {floor:.1f} ms ({args.batch / floor * 1e3:.0f} tok/s) with nothing "
          f"else in it; the rest of this one took up to {max(0.0, step - gemm - attention):.1f} "
          f"ms")


def weight_arrays(weight) -> list[np.ndarray]:
    """The arrays a weight of any kind (`model/weights/quant.Weight`) holds."""
    from nanovllm.model.weights.adapted import AdaptedWeight
    from nanovllm.model.weights.stacked import StackedWeight

    if isinstance(weight, np.ndarray):
        return [weight]
    if isinstance(weight, StackedWeight):
        return [a for part in weight.parts for a in weight_arrays(part)]
    if isinstance(weight, AdaptedWeight):
        return weight_arrays(weight.base)
    values = (getattr(weight, f.name) for f in dataclasses.fields(weight))
    return [v for v in values if isinstance(v, np.ndarray)]


def add_decode_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="gpt2",
                   help="preset, checkpoint directory or .gguf file")
    p.add_argument("--load-format", choices=["dummy", "auto"], default="dummy",
                   help="dummy (default): random weights in the model's shapes; auto: the "
                        "checkpoint's own (a .gguf file's block-quantized matrices as stored)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--context", type=int, default=96, help="context length when timing starts")
    p.add_argument("--steps", type=int, default=20)


def decoding_engine(args: argparse.Namespace, **config):
    """An engine (weights as `args.load_format` says, `config` as EngineConfig options) whose
    `args.batch` greedy sequences are decoding at `args.context` tokens, with at least
    `args.steps` steps to go."""
    from nanovllm import EngineConfig, LLMEngine, SamplingParams

    engine = LLMEngine(EngineConfig(args.model, load_format=args.load_format, **config))
    rng = np.random.default_rng(0)
    for i in range(args.batch):
        prompt = rng.integers(0, engine.model_config.vocab_size - 1, 32).tolist()
        engine.add_request(str(i), prompt, SamplingParams(temperature=0, ignore_eos=True,
                                                          max_tokens=args.context + args.steps))
    for _ in range(args.context - 32 + 1):
        engine.step()
    return engine


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_decode_args(p)
    p.add_argument("--kv-cache-dtype", choices=KV_CACHE_DTYPE_CHOICES, default="auto")
    p.add_argument("--quantization", choices=["int8"], default=None,
                   help="int8: the W8A8 weights (model/kernels/int8_gemm.py), in the step and the chain")
    p.add_argument("--roof", action="store_true",
                   help="also measure the memory bandwidth (scripts/roofs.py) and say how fast "
                        "the step streams its weights against it (the bound at batch 1), and "
                        "time a bare read of the same matrices in the step's calls: the "
                        "shortest step products with no arithmetic would leave")
    p.add_argument("--floor-rows", type=int, default=None, metavar="N",
                   help="also time the step's products over N rows (512: a prefill's) and say "
                        "how long a step of --batch would take at least with its products at "
                        "that rate and its attention reading the KV cache at the memory roof")
    args = p.parse_args(argv)
    engine = decoding_engine(args, kv_cache_dtype=args.kv_cache_dtype,
                             quantization=args.quantization)
    fns = [engine.step, gemm_chain(engine.runner.weights, args.batch)]
    bare = args.roof and not config.DISABLE_JIT
    if bare:
        read, read_bytes = bare_read_chain(engine.runner.weights)
        fns.append(read)
    step, gemm, *read_ms = alternating_medians_ms(fns, args.steps)
    print(f"batch {args.batch}, context ~{args.context}: step {step:.1f} ms "
          f"({args.batch / step * 1e3:.0f} tok/s); weight GEMMs alone {gemm:.1f} ms; "
          f"everything else {step - gemm:.1f} ms = {100 * (1 - gemm / step):.0f}% of the step")
    if args.roof:
        from nanovllm.scripts.roofs import measure_roofs

        mats, head = step_matrices(engine.runner.weights)
        nbytes = sum(m.nbytes for ms in mats for m in ms) + head.nbytes
        bandwidth = measure_roofs().bandwidth
        print(f"weights {nbytes / 1e6:.0f} MB a step: streamed at {nbytes / step / 1e6:.1f} GB/s "
              f"in the step, {nbytes / gemm / 1e6:.1f} GB/s in the GEMMs alone; memory roof "
              f"{bandwidth / 1e9:.1f} GB/s (measured now): at most "
              f"{bandwidth / nbytes:.1f} steps/s")
    if args.floor_rows:
        print_batch_floor(engine, args, step, gemm)
    if bare:
        floor = read_ms[0] + max(0.0, step - gemm)  # (the two medians can cross on a tiny model)
        print(f"the same matrices read bare, matrix by matrix: {read_ms[0]:.1f} ms "
              f"({read_bytes / read_ms[0] / 1e6:.1f} GB/s); with everything else as it is, "
              f"a step takes at least {floor:.1f} ms ({args.batch / floor * 1e3:.0f} tok/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
