"""`nanovllm bench offline --compare llama.cpp`: our engine and llama.cpp on the same GGUF files.

    nanovllm bench offline --model qwen3-0.6b --compare llama.cpp --llama-cpp-dir ~/llama.cpp \\
        --gguf-types Q4_0,Q4_K_M,Q8_0 --batch-sizes 1,16,64 --threads 2 --reps 2

Files. --model is a .gguf file (run as it is), or a checkpoint (a directory, or a preset name:
random weights in its shapes when the hub is unreachable) that llama.cpp's own
`convert_hf_to_gguf.py` converts to F16 and `llama-quantize` quantizes to each of --gguf-types,
once, into --gguf-dir. Both sides load the very same file.

Workloads, on both sides with --threads threads (llama.cpp's -t):
- batch-1 decode: llama-bench's tg<N> (N = --output-len new tokens from an empty context)
  against our 1 x L -> N (decode tokens/s of the N-1 tokens after the first);
- prefill: llama-bench's pp<P> against our 1 x P -> 1 (P = --prefill-len);
- batched decode at each --batch-sizes B above 1: llama-batched-bench's S_TG (B sequences of L
  prompt tokens, N new each) against our B x L -> N, where llama-batched-bench is built.
Every rep runs llama.cpp's tools once and our cells once, the order swapped every other rep, so
a busy machine slows both alike; the table shows medians [min-max] and ratio = nanovllm /
llama.cpp. A roof column puts each figure against this machine's limits (scripts/roofs.py):
batch-1 decode as the weight matrices' bytes streamed per second (our engine's count of the
file's matrices, for both sides) over memory bandwidth, prefill and batched decode as multiply-
adds per second over the peak of the block-quantized kernel this CPU runs (on a file of another
type, the int8 kernel's).

Threads. Both sides run on GNU OpenMP, and llama.cpp's tools inherit this process's environment:
the spin settings our kernels start with (model/platform/threads.py: GOMP_SPINCOUNT,
OMP_WAIT_POLICY) hold for both, unless you set them yourself. With GNU OpenMP's own default (a
long spin) a machine busy with other work slows llama.cpp's 2-thread decode many times over.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from nanovllm.scripts import llama_cpp
from nanovllm.scripts.bench_utils import Summary, default_threads, render_table, write_json

DEFAULT_TYPES = "Q4_0,Q4_K_M,Q8_0"


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--llama-cpp-dir", default=None, metavar="DIR",
                        help="--compare llama.cpp: a llama.cpp source tree built with cmake "
                             f"(default ${llama_cpp.ENV}, else the tools on PATH)")
    parser.add_argument("--gguf-types", default=DEFAULT_TYPES, metavar="T,T,...",
                        help="--compare llama.cpp on a checkpoint: the llama-quantize types "
                             f"to make and compare (default {DEFAULT_TYPES})")
    parser.add_argument("--gguf-dir", default=None, metavar="DIR",
                        help="--compare llama.cpp: where the GGUF files made from a checkpoint "
                             "are kept (default: nanovllm's cache, bench-gguf/)")


@dataclass(slots=True)
class Workload:
    """One line of the table: a file and what is timed on it, with every rep of both sides."""
    gguf_type: str
    name: str                 # "decode 1", "prefill 512", "decode 16"
    batch_size: int
    ours: list[float] = field(default_factory=list)    # tokens/s
    theirs: list[float] = field(default_factory=list)  # tokens/s

    @property
    def ratio(self) -> float | None:
        ours, theirs = Summary.of(self.ours), Summary.of(self.theirs)
        return ours.median / theirs.median if ours and theirs and theirs.median else None


@dataclass(frozen=True, slots=True)
class Cost:
    """What a token costs on the file's weights (`roofs.step_cost`)."""
    weight_bytes: int
    multiply_adds: int        # per token, LM head included
    head_multiply_adds: int   # of which the LM head's (a prefill runs it for one token only)
    block_quantized: bool = False  # the matrices multiply on the block-quantized kernels


def roof_share(w: Workload, tps: float, cost: Cost, roofs) -> float:
    """The share of this machine's roof a rate reaches: a batch-1 decode streams every weight
    once per token (memory bandwidth); prefill and batched decode multiply (the block-quantized
    kernel's peak on a block-quantized file, else the int8 kernel's)."""
    if w.name.startswith("decode") and w.batch_size == 1:
        return cost.weight_bytes * tps / roofs.bandwidth
    macs = cost.multiply_adds - (cost.head_multiply_adds if w.name.startswith("prefill") else 0)
    return macs * tps / (roofs.block_peak if cost.block_quantized else roofs.int8_peak)


def format_table(workloads: list[Workload], costs: dict[str, Cost], roofs, title: str) -> str:
    head = ["file", "workload", "llama.cpp tok/s", "nanovllm tok/s", "ratio", "roof: llama.cpp",
            "roof: nanovllm"]
    rows = [head]
    for w in workloads:
        ours, theirs = Summary.of(w.ours), Summary.of(w.theirs)
        shares = [f"{roof_share(w, s.median, costs[w.gguf_type], roofs):.0%}" if s and roofs
                  else "-" for s in (theirs, ours)]
        rows.append([w.gguf_type, w.name, theirs.fmt(1) if theirs else "-",
                     ours.fmt(1) if ours else "-", f"{w.ratio:.2f}x" if w.ratio else "-",
                     *shares])
    return f"{title}\n{render_table(rows)}"


# --------------------------------------------------------------------------- files


def source_files(args: argparse.Namespace, tools: llama_cpp.LlamaCppTools, threads: int,
                 log) -> dict[str, Path]:
    """The GGUF files to compare on, by type: --model itself, or those made from it."""
    from nanovllm.model.checkpoint.gguf_loader import find_gguf

    gguf = find_gguf(args.model)
    if gguf is not None:
        return {gguf.stem: gguf}
    kinds = [k.strip() for k in args.gguf_types.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in llama_cpp.QUANT_TYPES]
    if unknown or not kinds:
        raise ValueError(f"--gguf-types: {', '.join(unknown) or 'none given'}; llama-quantize "
                         f"types: {', '.join(llama_cpp.QUANT_TYPES)}")
    hf_dir = checkpoint(args.model, args.allow_dummy_fallback)
    out_dir = Path(args.gguf_dir).expanduser() if args.gguf_dir else _default_gguf_dir(hf_dir)
    return llama_cpp.gguf_files(tools, hf_dir, kinds, out_dir, threads,
                                pre=_dummy_pre_tokenizer(hf_dir), log=log)


def checkpoint(model: str, allow_dummy_fallback: bool) -> Path:
    """The checkpoint directory `model` names (a preset's random weights when the hub is
    unreachable and the fallback is allowed, as the engine would load)."""
    from nanovllm.hub import HubUnavailableError, resolve_model
    from nanovllm.model.checkpoint.dummy import dummy_checkpoint_dir
    from nanovllm.model_loading import preset_for

    try:
        return resolve_model(model)
    except HubUnavailableError:
        if not (allow_dummy_fallback and (preset := preset_for(model))):
            raise
        return dummy_checkpoint_dir(preset)


def _dummy_pre_tokenizer(hf_dir: Path) -> str | None:
    """Random-weight checkpoints carry GPT-2's byte-level BPE, which the converter would not
    recognise under another architecture's name; real ones it recognises itself."""
    from nanovllm.model import is_dummy_checkpoint

    return "gpt-2" if is_dummy_checkpoint(hf_dir) else None


def _default_gguf_dir(hf_dir: Path) -> Path:
    from nanovllm.model.checkpoint.dummy import cache_root

    tag = hashlib.sha256(str(hf_dir.resolve()).encode()).hexdigest()[:12]
    return cache_root() / "bench-gguf" / f"{hf_dir.name}-{tag}"


# --------------------------------------------------------------------------- timing


def bench_file(args, kind: str, path: Path, tools, threads: int, log) -> tuple[list[Workload],
                                                                             Cost, float]:
    """Every workload on one file, both sides alternating; also its Cost and our load time."""
    from nanovllm.model.weights.block_quant import BlockWeight
    from nanovllm.scripts.bench_engine import Cell, Prompts, make_engine, run_ours
    from nanovllm.scripts.roofs import step_cost

    t0 = time.perf_counter()
    engine = make_engine(argparse.Namespace(**{**vars(args), "model": str(path)}),
                         quantization=None, dtype="auto", speculative_config=None,
                         load_format="auto", num_kv_blocks=kv_blocks_for(args))
    load_s = time.perf_counter() - t0
    log(f"{path.name}: loaded in {load_s:.1f} s")
    prompt_len, new, prefill = args.input_len[0], args.output_len[0], args.prefill_len[0]
    cells = {f"decode {b}": Cell(b, prompt_len, new) for b in args.batch_sizes}
    cells[f"prefill {prefill}"] = Cell(1, prefill, 1)
    work = {name: Workload(kind, name, c.batch_size) for name, c in cells.items()}
    source = Prompts(np.random.default_rng(args.bench_seed), engine.vocab_size)
    for cell in cells.values():  # warm-up: compiles and touches every path once
        run_ours(engine, source.take(Cell(cell.batch_size, cell.input_len,
                                          min(cell.output_len, 8))), min(cell.output_len, 8))
    batched = [b for b in args.batch_sizes if b > 1]

    def theirs():
        got = llama_cpp.llama_bench(tools, path, threads, prefill, new)
        for name, tps in (("decode 1", got.decode_tps), (f"prefill {prefill}", got.prefill_tps)):
            if name in work and tps:
                work[name].theirs.append(tps)
        for b, tps in llama_cpp.batched_bench(tools, path, threads, prompt_len, new,
                                              batched).items():
            work[f"decode {b}"].theirs.append(tps)

    def ours():
        for name, cell in cells.items():
            got = run_ours(engine, source.take(cell), cell.output_len)
            work[name].ours.append(got.prefill_tps if cell.output_len == 1 else got.decode_tps)

    for rep in range(args.reps):
        for side in ((theirs, ours) if rep % 2 == 0 else (ours, theirs)):
            side()
        log(f"  {kind} rep {rep + 1}/{args.reps}: " + "; ".join(
            f"{w.name} {w.theirs[-1] if w.theirs else 0:.1f} / {w.ours[-1]:.1f}"
            for w in work.values()) + " tok/s (llama.cpp / nanovllm)")
    weights = engine.runner.weights
    quantized = any(isinstance(m, BlockWeight) for m in weights.matrices())
    return list(work.values()), Cost(*step_cost(weights), quantized), load_s


def kv_blocks_for(args: argparse.Namespace) -> int:
    """--num-kv-blocks, or a KV pool that holds every sequence of the largest batch whole, as
    llama-batched-bench sizes its context for it: the default memory budget may hold fewer
    tokens than that, and a cell that preempted would time recomputation, not decoding."""
    from nanovllm.block_manager import blocks_needed

    if args.num_kv_blocks:
        return args.num_kv_blocks
    per_seq = blocks_needed(args.input_len[0] + args.output_len[0], args.block_size)
    prefill = blocks_needed(args.prefill_len[0] + 1, args.block_size)
    return max(max(args.batch_sizes) * (per_seq + 1), prefill + 1)


def check(args: argparse.Namespace) -> str | None:
    """A one-line complaint about arguments this comparison cannot take, or None."""
    several = [n for n in ("input_len", "output_len", "prefill_len") if len(getattr(args, n)) != 1]
    if several:
        return f"--compare llama.cpp takes one value of --{several[0].replace('_', '-')}"
    if args.output_len[0] < 2:
        return "--compare llama.cpp: --output-len must be at least 2 (a decode to time)"
    if args.dataset_path or args.speculative_config:
        return "--compare llama.cpp runs random prompts without speculation"
    return None


def run(args: argparse.Namespace) -> int:
    from nanovllm.scripts.bench_utils import describe_environment, environment
    from nanovllm.scripts.roofs import describe as describe_roofs
    from nanovllm.scripts.roofs import measure_roofs

    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    if problem := check(args):
        print(f"error: {problem}", file=sys.stderr)
        return 2
    threads = args.threads or default_threads()
    try:
        tools = llama_cpp.find_tools(args.llama_cpp_dir)
        files = source_files(args, tools, threads, log)
    except (llama_cpp.MissingTool, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    env = environment(threads)
    out = sys.stderr if args.json == "-" else sys.stdout
    print(describe_environment(env), file=out, flush=True)
    roofs = measure_roofs()
    print(describe_roofs(roofs), file=out, flush=True)
    workloads, costs, loads = [], {}, {}
    for kind, path in files.items():
        got, costs[kind], loads[kind] = bench_file(args, kind, path, tools, threads, log)
        workloads += got
        gc.collect()  # the file's engine, before the next one loads
    title = (f"\n{args.model}: the same GGUF file on both sides, {threads} threads, tokens/s, "
             f"median [min-max] of {args.reps} alternating runs; ratio = nanovllm / llama.cpp; "
             f"load average {env['load_average_1min']} at the start")
    print(format_table(workloads, costs, roofs, title), file=out, flush=True)
    print("our load time: " + ", ".join(f"{k} {s:.1f} s" for k, s in loads.items()), file=out)
    if args.json:
        write_json({"environment": env, "roofs": asdict(roofs),
                    "files": {k: str(p) for k, p in files.items()}, "load_s": loads,
                    "costs": {k: asdict(c) for k, c in costs.items()},
                    "workloads": [asdict(w) | {"ratio": w.ratio} for w in workloads]}, args.json)
    return 0
