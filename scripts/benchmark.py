"""Offline benchmark: prefill and decode throughput of the engine, optionally side by side with
Hugging Face transformers on the same checkpoint, prompts and threads.

    python scripts/benchmark.py --model gpt2 --load-format dummy --compare transformers
    python scripts/benchmark.py --quantization int8            # or --dtype bfloat16
    python scripts/benchmark.py --compare precisions           # float32, int8, bfloat16
    nanovllm bench offline --model qwen3-0.6b --compare llama.cpp --llama-cpp-dir DIR
    nanovllm bench offline --batch-sizes 1,8 --input-len 32 --output-len 128 --reps 5 --json out.json
    python scripts/benchmark.py --quantization int8 --temperature 1   # the sampler served traffic pays
    python scripts/benchmark.py --batch-sizes 1,64 --speculative-config \
        '{"model": "DIR", "quantization": "int8", "num_speculative_tokens": 4}'
    python scripts/benchmark.py --model DIR --dataset-name custom --dataset-path prompts.jsonl

Workload. A cell is B prompts of L random token ids each (fresh ids every run, so the prefix
cache never hits), greedy, EOS ignored, N new tokens each. --temperature T samples instead (no
top-k, top-p or min-p): served requests that send no temperature sample at 1.0, as vLLM's
`bench serve` and `bench throughput` requests do, and the sampler is part of their cost. The
default grid is B in 1,8,32,64 with L=32, N=128 (decode), plus one prefill cell: 1 prompt of
512 tokens, N=1.
With --dataset-name custom (vLLM bench's name) the decode cells' prompts are real text instead:
--dataset-path is a JSON Lines file, one {"prompt": "..."} a line, tokenized by the model's
tokenizer; each run takes the next B prompts in file order (from the top again when the file
runs out, so the prefix cache may then hit: a long enough file keeps prefill honest), and the
cell reads "B x dataset -> N". The prefill cells stay random.

nanovllm. All B requests go into an LLMEngine at t0, then step() runs until they finish. t_first
is the end of the step after which every request has its first token, t_end the end of the last.
    prefill tok/s = B*L / (t_first - t0)          decode tok/s = B*(N-1) / (t_end - t_first)
(The first token comes out of the prefill pass, so decode counts the N-1 tokens after it.)

transformers. GPT2LMHeadModel.from_pretrained(same dir), fp32, eval, inference_mode, its default
attention, KV cache on, do_sample=False, min_new_tokens=max_new_tokens (EOS ignored), the same
token ids as one batch (equal lengths: no padding); with --temperature, do_sample=True at that
temperature with top_k=0 and top_p=1.0 (the same distribution as ours). generate() hides its
steps, but it calls its stopping criteria after every step: one that never stops timestamps the
first call, which is t_first (prefill + first token) of that very run; the formulas are then the
same as ours.
(Timing generate(max_new_tokens=1) and subtracting it from generate(N) needs two runs, and on
a busy machine their noise can make the difference meaningless, even negative.)

Fairness. torch.set_num_threads is set to numpy's BLAS thread count (--threads changes both).
Before each cell both sides do a warm-up run (output capped at 8 tokens). Runs alternate
ours/theirs, --reps times; tables show the median and [min-max], the JSON every run.
ratio = nanovllm / transformers (above 1: nanovllm is faster).

Precisions. --compare precisions runs three engines on the same checkpoint in one process:
float32, int8 weights and bfloat16 weights (`--dtype`, `--quantization` and
--speculative-config are ignored then).
Every rep runs the same prompts through each in turn, so a busy machine slows all three alike;
ratio = int8 (or bfloat16) / float32. The kernels' path for this CPU is printed first.
A roofs table follows (scripts/roofs.py): this machine's memory bandwidth and float32, int8 and
bfloat16 multiply-add peaks, measured first, and per cell and precision the bytes of weight matrices
streamed per second (a decode step reads each once: the figure that matters at batch 1) and the
multiply-adds per second (at batch 64 and in prefill), each as a share of its roof.

Speculation. With --speculative-config, every rep runs the same prompts with speculation off,
then on (two engines in one process, so a busy machine slows both alike); ratio = on / off.
A last table gives the speculating engine's acceptance over the timed runs (vLLM's counters:
proposed and accepted tokens, mean acceptance length = tokens per speculating step, and the
acceptance rate by proposal position), why the engine speculated as it did (the wall time of its
whole steps proposing each k against its plain steps of the batch, as it last measured them,
and the share of decodes that chose each k: runner/spec_decode/policy.py), and
whether every greedy output was identical to the one with speculation off (with --temperature the outputs are samples: not compared). Random
prompts repeat nothing, so n-gram lookup rarely proposes and a draft of a trained model has
nothing to agree on: measure acceptance on a dataset of text.
"""

from __future__ import annotations

import argparse
import copy
import functools
import itertools
import json
import sys
from dataclasses import asdict, dataclass, field

from nanovllm.model.platform.threads import configure_thread_pools

configure_thread_pools()  # before numpy loads: see model/platform/threads.py

# isort: split
import numpy as np  # noqa: E402

from nanovllm.model.architectures.gpt2_config import PRESETS  # noqa: E402
from nanovllm.model.platform.cpu import kernel_path  # noqa: E402
from nanovllm.runner.kv_cache import kv_bytes_per_block  # noqa: E402
from nanovllm.scripts import bench_vs_llama_cpp  # noqa: E402
from nanovllm.scripts.bench_engine import Cell, Prompts, Run, make_engine, run_ours  # noqa: E402
from nanovllm.scripts.bench_transformers import (  # noqa: E402
    INSTALL_REFERENCE,
    TransformersRunner,
    load_torch_first,
    missing_reference,
)
from nanovllm.scripts.bench_utils import (  # noqa: E402
    Summary,
    default_threads,
    describe_environment,
    environment,
    limit_blas_threads,
    parse_int_list,
    render_table,
    write_json,
)
from nanovllm.scripts.roofs import describe as describe_roofs  # noqa: E402
from nanovllm.scripts.roofs import measure_roofs, step_cost  # noqa: E402

WARMUP_TOKENS = 8
DATASETS = ("random", "custom")  # vLLM bench's --dataset-name for random ids and a JSON Lines file
WARMUP_INPUT_LEN = 32  # the random prompts warming up a dataset cell (the dataset's stay unseen)
# --compare precisions: the engines besides float32, and the options that make them.
NARROW = {"int8": {"quantization": "int8", "dtype": "auto"},
          "bfloat16": {"quantization": None, "dtype": "bfloat16"}}
SPECULATIVE = "speculative"  # --speculative-config: the engine that speculates


@dataclass(slots=True)
class CellResult:
    cell: Cell
    ours: list[Run] = field(default_factory=list)
    theirs: list[Run] = field(default_factory=list)
    narrow: dict[str, list[Run]] = field(default_factory=dict)  # int8 / bfloat16 engines' runs
    spec: dict | None = None  # --speculative-config: acceptance over the timed runs

    def summary(self, side: str, metric: str) -> Summary | None:
        """side: "nanovllm" (float32 under --compare precisions), "transformers", or a NARROW."""
        runs = {"nanovllm": self.ours, "transformers": self.theirs}.get(side)
        runs = self.narrow.get(side, []) if runs is None else runs
        return Summary.of([v for r in runs if (v := getattr(r, metric)) is not None])

    def ratio(self, metric: str, side: str = "nanovllm", base: str = "transformers") -> float | None:
        """Median of `side` / median of `base` (default: nanovllm / transformers)."""
        ours, theirs = self.summary(side, metric), self.summary(base, metric)
        return ours.median / theirs.median if ours and theirs and theirs.median else None


# --------------------------------------------------------------------------- arguments


def add_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    from nanovllm.config import add_engine_args

    parser.add_argument("--model", default="gpt2",
                        help="checkpoint directory or hub name (default gpt2; if the hub is "
                             "unreachable a preset falls back to random weights, which run at the "
                             "same speed: --allow-dummy-fallback is on by default here)")
    parser.add_argument("--batch-sizes", type=parse_int_list, default=[1, 8, 32, 64],
                        metavar="B,B,...", help="batch sizes of the decode grid (default 1,8,32,64)")
    parser.add_argument("--input-len", type=parse_int_list, default=[32], metavar="L,...",
                        help="prompt length(s) in tokens (default 32)")
    parser.add_argument("--output-len", type=parse_int_list, default=[128], metavar="N,...",
                        help="new tokens per request (default 128)")
    parser.add_argument("--prefill-len", type=parse_int_list, default=[512], metavar="L,...",
                        help="prompt length(s) of the 1-prompt prefill cells (default 512; "
                             "empty string: none)")
    parser.add_argument("--reps", type=int, default=3, help="timed runs per cell (default 3)")
    parser.add_argument("--threads", type=int, default=None,
                        help="BLAS threads for numpy and torch (default: numpy's current count)")
    parser.add_argument("--compare", choices=["transformers", "precisions", "llama.cpp"],
                        default=None,
                        help="'transformers': also run the same workload through HF transformers "
                             "generate(); 'precisions': float32, int8 and bfloat16 weights in "
                             "turn; 'llama.cpp': llama.cpp's llama-bench on the same GGUF files "
                             "(scripts/bench_vs_llama_cpp.py)")
    parser.add_argument("--json", nargs="?", const="-", default=None, metavar="FILE",
                        help="write results as JSON to FILE (or stdout with no FILE: the table "
                             "then goes to stderr)")
    parser.add_argument("--bench-seed", type=int, default=0, help="seed of the random prompts")
    parser.add_argument("--temperature", type=float, default=0.0, metavar="T",
                        help="every request's sampling temperature (default 0: greedy, as this "
                             "benchmark has always measured; served requests that send none "
                             "sample at 1.0, so use 1 to include the sampler they pay for)")
    parser.add_argument("--dataset-name", choices=DATASETS, default="random",
                        help="the decode cells' prompts: 'random' token ids of --input-len "
                             "(default), or 'custom': the texts of --dataset-path")
    parser.add_argument("--dataset-path", default=None, metavar="FILE.jsonl",
                        help="--dataset-name custom: JSON Lines, one {\"prompt\": \"...\"} a line")
    parser.add_argument("--lora-modules", nargs="+", default=[], metavar="NAME=PATH",
                        help="LoRA adapters (as `serve` takes them): instead of the grid, a "
                             "batch of 16 over up to 8 of them and one adapter at batch 1, each "
                             "against the base model (`nanovllm bench offline` runs "
                             "scripts/bench_lora.py then)")
    bench_vs_llama_cpp.add_args(parser)
    add_engine_args(parser)
    # Random weights cost the same compute as real ones, so a benchmark can always run;
    # --no-allow-dummy-fallback insists on the real checkpoint.
    parser.set_defaults(allow_dummy_fallback=True)
    return parser


def grid(args: argparse.Namespace) -> list[Cell]:
    input_lens = [None] if args.dataset_name == "custom" else args.input_len
    cells = [Cell(b, i, o) for i in input_lens for o in args.output_len
             for b in args.batch_sizes]
    return cells + [Cell(1, p, 1) for p in args.prefill_len]


def check_args(args: argparse.Namespace, cells: list[Cell]) -> str | None:
    """A one-line complaint about the arguments, or None."""
    if args.reps < 1:
        return "--reps must be at least 1"
    if args.threads is not None and args.threads < 1:
        return "--threads must be at least 1"
    if not args.temperature >= 0.0:  # (NaN too)
        return "--temperature must be at least 0"
    if not cells:
        return "nothing to run: give --batch-sizes and lengths, or --prefill-len"
    if (args.dataset_name == "custom") != (args.dataset_path is not None):
        return "--dataset-name custom and --dataset-path go together"
    if args.dataset_path and args.compare == "transformers":
        return "--compare transformers runs prompts of one length: not with --dataset-name custom"
    bad = [c for c in cells if min(c.batch_size, c.input_len or 1, c.output_len) < 1]
    return f"cell {bad[0]}: batch size and lengths must be positive" if bad else None


def load_dataset(path: str, tokenizer) -> list[list[int]]:
    """The token ids of a JSON Lines file's prompts, in file order (vLLM bench's custom dataset:
    one object a line with a "prompt" string; blank lines are skipped)."""
    prompts = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                text = json.loads(line).get("prompt")
            except (json.JSONDecodeError, AttributeError):
                text = None
            if not isinstance(text, str) or not text:
                raise ValueError(f"{path}, line {number}: expected {{\"prompt\": \"text\"}}")
            prompts.append(tokenizer.encode(text))
    if not prompts:
        raise ValueError(f"{path}: no prompts")
    return prompts


# --------------------------------------------------------------------------- the benchmark


def bench_cell(cell: Cell, engine, theirs: TransformersRunner | None, reps: int,
               prompt_source: Prompts, log, narrow: dict | None = None,
               temperature: float = 0.0) -> CellResult:
    """`narrow`: name -> engine, run after `engine` with the same prompts in every rep."""
    result, narrow = CellResult(cell), narrow or {}
    warm = Cell(cell.batch_size, cell.input_len or WARMUP_INPUT_LEN,
                min(cell.output_len, WARMUP_TOKENS))
    for e in (engine, *narrow.values()):
        run_ours(e, prompt_source.take(warm), warm.output_len, temperature=temperature)
    if theirs:
        theirs.run(prompt_source.take(warm), warm.output_len, temperature)
    spec = narrow.get(SPECULATIVE)
    # Samples of two engines differ even where their distributions agree: only greedy compares.
    before, identical = spec and copy.deepcopy(spec.spec_stats), (True if not temperature else None)
    chosen = spec and list(spec.runner.speculator.chosen)
    for rep in range(reps):
        prompts = prompt_source.take(cell)
        base_out: list[list[int]] = []
        result.ours.append(run_ours(engine, prompts, cell.output_len, base_out, temperature))
        log(f"  {cell}  rep {rep + 1}/{reps}  nanovllm: {_fmt_run(result.ours[-1])}")
        for name, e in narrow.items():
            out: list[list[int]] = []
            result.narrow.setdefault(name, []).append(
                run_ours(e, prompts, cell.output_len, out, temperature))
            log(f"  {cell}  rep {rep + 1}/{reps}  {name}: {_fmt_run(result.narrow[name][-1])}")
            if identical is not None:
                identical = identical and (name != SPECULATIVE or out == base_out)
        if theirs:
            prefill_s, decode_s = theirs.run(prompts, cell.output_len, temperature)
            result.theirs.append(Run(prefill_s, decode_s, cell.batch_size * cell.input_len,
                                     cell.batch_size * (cell.output_len - 1)))
            log(f"  {cell}  rep {rep + 1}/{reps}  transformers: {_fmt_run(result.theirs[-1])}")
    if spec:
        result.spec = (acceptance(before, spec.spec_stats) | {"identical": identical}
                       | decisions(chosen, spec.runner.speculator, cell.batch_size))
    return result


def acceptance(before, after) -> dict:
    """The speculating engine's counters between two copies of its SpecDecodeStats."""
    drafts = after.num_drafts - before.num_drafts
    proposed = after.num_draft_tokens - before.num_draft_tokens
    accepted = after.num_accepted_tokens - before.num_accepted_tokens
    by_position = [a - b for a, b in itertools.zip_longest(
        after.accepted_per_position, before.accepted_per_position, fillvalue=0)]
    return {"drafts": drafts, "proposed": proposed, "accepted": accepted,
            "mean_acceptance_length": 1 + accepted / drafts if drafts else None,
            "acceptance_by_position": [a / drafts for a in by_position] if drafts else []}


def decisions(before: list[int], speculator, batch_size: int) -> dict:
    """What the rule chose over the timed runs (decodes per k, 0 to num_speculative_tokens) and
    what it saw at the end: a whole step proposing each k against a plain step of `batch_size`
    decodes (index k), and which of those it had timed (the others stand in)."""
    seen = speculator.summary(batch_size)
    return {"chosen_k": [a - b for a, b in zip(speculator.chosen, before)],
            "step_cost": seen["step_cost"], "step_cost_timed": seen["timed"]}


def _fmt_run(run: Run) -> str:
    decode = f", decode {run.decode_tps:,.1f} tok/s" if run.decode_tps else ""
    return f"prefill {run.prefill_tps:,.1f} tok/s{decode}"


def run(args: argparse.Namespace) -> int:
    if args.compare == "llama.cpp":
        return bench_vs_llama_cpp.run(args)
    cells = grid(args)
    if problem := check_args(args, cells):
        print(f"error: {problem}", file=sys.stderr)
        return 2
    limits = limit_blas_threads(args.threads)  # noqa: F841 - the limit lasts while this lives
    threads = args.threads or default_threads()
    precisions = args.compare == "precisions"
    if args.compare == "transformers" and (missing := missing_reference()):
        print(f"error: --compare transformers needs torch and transformers (not installed: "
              f"{missing}); install the CPU build: {INSTALL_REFERENCE}", file=sys.stderr)
        return 2
    if args.compare == "transformers":
        load_torch_first()
    try:
        if precisions:
            engine = make_engine(args, quantization=None, dtype="auto", speculative_config=None)
            narrow = {name: make_engine(args, speculative_config=None, **options)
                      for name, options in NARROW.items()}
        elif args.speculative_config:
            engine = make_engine(args, speculative_config=None)
            narrow = {SPECULATIVE: make_engine(args)}
        else:
            engine, narrow = make_engine(args), {}
    except (ValueError, OSError, RuntimeError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    try:
        dataset = load_dataset(args.dataset_path, engine.tokenizer) if args.dataset_path else None
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if problem := _check_fit(engine, cells, dataset):
        print(f"error: {problem}", file=sys.stderr)
        return 2
    theirs = TransformersRunner(engine.model_path, threads) if args.compare == "transformers" \
        else None
    report = _report_header(args, engine, theirs, threads, dataset)
    out = sys.stderr if args.json == "-" else sys.stdout
    print(describe_environment(report["environment"]), file=out, flush=True)
    print(report["environment"]["kernels"], file=out, flush=True)
    print(describe_model(report["model"]), file=out, flush=True)
    if dataset:
        print(describe_dataset(report["settings"]["dataset"]), file=out, flush=True)
    roofs = measure_roofs() if precisions else None
    if roofs:
        report["roofs"] = asdict(roofs)
        print(describe_roofs(roofs), file=out, flush=True)
    log = functools.partial(print, file=sys.stderr, flush=True)
    # The engine's vocabulary: the tokenizer's size where it is below the config's (Qwen's
    # config counts padding rows no token id names), as `bench serve` draws.
    source = Prompts(np.random.default_rng(args.bench_seed), engine.vocab_size, dataset)
    results = [bench_cell(cell, engine, theirs, args.reps, source, log, narrow, args.temperature)
               for cell in cells]
    roof_rows = roof_table(results, {"nanovllm": engine, **narrow}, roofs) if roofs else []
    print(format_table(results, report) + format_acceptance(results) + format_roofs(roof_rows),
          file=out, flush=True)
    if args.json:
        write_json({**report, "results": [_result_json(r) for r in results],
                    "roof_cells": roof_rows}, args.json)
    return 0


def roof_table(results: list[CellResult], engines: dict, roofs) -> list[dict]:
    """Per cell and precision: weight bytes streamed and multiply-adds per second, and their
    shares of the roofs. Decode cells count steps (B tokens each); a prefill cell counts its
    prompt's tokens through the blocks (its LM head runs for one token only)."""
    rows = []
    for r in results:
        for side, engine in engines.items():
            nbytes, macs, head_macs = step_cost(engine.runner.weights)
            prefill = r.cell.output_len == 1
            if prefill and r.cell.input_len is None:
                continue  # a dataset's prompts have no one length to divide by
            summary = r.summary(side, "prefill_tps" if prefill else "decode_tps")
            if not summary:
                continue
            tps = summary.median
            if prefill:
                macs -= head_macs
                streamed = nbytes * tps / r.cell.input_len  # one pass over the prompt
            else:
                streamed = nbytes * tps / r.cell.batch_size
            peak = {"int8": roofs.int8_peak, "bfloat16": roofs.bf16_peak}.get(
                side, roofs.float32_peak)
            rows.append({"cell": str(r.cell), "precision": "float32" if side == "nanovllm" else side,
                         "weights_bytes_per_s": streamed,
                         "of_bandwidth": streamed / roofs.bandwidth,
                         "multiply_adds_per_s": macs * tps, "of_peak": macs * tps / peak})
    return rows


def format_roofs(rows: list[dict]) -> str:
    if not rows:
        return ""
    head = ["batch x prompt -> new", "precision", "weights GB/s", "of memory",
            "G multiply-adds/s", "of its peak"]
    body = [[r["cell"], r["precision"], f"{r['weights_bytes_per_s'] / 1e9:.1f}",
             f"{r['of_bandwidth']:.0%}", f"{r['multiply_adds_per_s'] / 1e9:.1f}",
             f"{r['of_peak']:.0%}"] for r in rows]
    return ("\n\nroofs: weights streamed (matters at batch 1) and multiply-adds (batch 64, "
            "prefill); peak = each precision's own\n" + render_table([head] + body))


def _check_fit(engine, cells: list[Cell], dataset: list[list[int]] | None) -> str | None:
    longest = max(map(len, dataset)) if dataset else 0
    for cell in cells:
        if (cell.input_len or longest) + cell.output_len > engine.max_model_len:
            return (f"cell {cell} needs {(cell.input_len or longest) + cell.output_len} tokens "
                    f"of context, but max_model_len is {engine.max_model_len}")
    return None


def describe_model(model: dict) -> str:
    """One line: the architecture, its size and what a token costs in the KV cache, beside
    GPT-2 124M's (float32: 12 layers x 2 x 768)."""
    gpt2 = kv_bytes_per_block(PRESETS["gpt2"], 1)
    return (f"model: {model['architecture']}, {model['params'] / 1e6:.1f}M parameters, "
            f"{model['n_head']} query / {model['num_kv_heads']} key-value heads; KV cache "
            f"{model['kv_bytes_per_token']:,} bytes per token (GPT-2 124M, float32: {gpt2:,})")


def _report_header(args, engine, theirs, threads: int, dataset: list[list[int]] | None) -> dict:
    cfg = engine.model_config
    env = environment(threads)
    env["kernels"] = kernel_path().describe()
    if theirs:
        env.update(theirs.info)
    return {
        "environment": env,
        "model": {"name": args.model, "path": str(engine.model_path), "dummy": engine.is_dummy,
                  "architecture": engine.architecture,
                  "params": cfg.num_params, "n_layer": cfg.n_layer, "n_embd": cfg.n_embd,
                  "n_head": cfg.n_head, "num_kv_heads": cfg.num_kv_heads,
                  "vocab_size": cfg.vocab_size,
                  "kv_bytes_per_token": kv_bytes_per_block(cfg, 1, engine.runner.kv_cache.dtype.name)},
        "settings": {"reps": args.reps, "warmup_tokens": WARMUP_TOKENS, "seed": args.bench_seed,
                     "temperature": args.temperature, "compare": args.compare,
                     "dataset": _dataset_settings(args, dataset),
                     "engine": {k: getattr(engine.config, k) for k in engine.config.__slots__}},
        "method": __doc__.split("\n\n", 2)[2].strip(),
    }


def describe_dataset(dataset: dict) -> str:
    tokens = dataset["prompt_tokens"]
    return (f"prompts: {dataset['prompts']} from {dataset['path']}, {tokens['min']}-"
            f"{tokens['max']} tokens (mean {tokens['mean']:.0f})")


def _dataset_settings(args, dataset: list[list[int]] | None) -> dict:
    if not dataset:
        return {"name": "random"}
    lengths = [len(p) for p in dataset]
    return {"name": args.dataset_name, "path": args.dataset_path, "prompts": len(dataset),
            "prompt_tokens": {"min": min(lengths), "mean": sum(lengths) / len(lengths),
                              "max": max(lengths)}}


def _result_json(r: CellResult) -> dict:
    entry = asdict(r.cell)
    for side, runs in (("nanovllm", r.ours), ("transformers", r.theirs)):
        if runs:
            entry[side] = {m: (asdict(s) if (s := r.summary(side, m)) else None)
                           for m in ("prefill_tps", "decode_tps")}
            entry[side]["runs"] = [asdict(run) for run in runs]
    if r.theirs:
        entry["ratio"] = {m: r.ratio(m) for m in ("prefill_tps", "decode_tps")}
    for name, runs in r.narrow.items():
        entry[name] = {m: (asdict(s) if (s := r.summary(name, m)) else None)
                       for m in ("prefill_tps", "decode_tps")}
        entry[name]["runs"] = [asdict(run) for run in runs]
        entry[name]["vs_float32" if name in NARROW else "vs_off"] = {
            m: r.ratio(m, name, "nanovllm") for m in ("prefill_tps", "decode_tps")}
    if r.spec:
        entry["acceptance"] = r.spec
    return entry


def format_table(results: list[CellResult], report: dict) -> str:
    model = report["model"]
    weights = "random weights" if model["dummy"] else "pretrained weights"
    temperature = report["settings"]["temperature"]
    sampler = f"sampled at temperature {temperature:g}" if temperature else "greedy"
    title = (f"\n{model['name']} ({model['params'] / 1e6:.3g}M params, {weights}), {sampler}, "
             f"tokens/s, median [min-max] of {report['settings']['reps']} runs")
    compare = any(r.theirs for r in results)
    narrow = list(dict.fromkeys(name for r in results for name in r.narrow))
    head = ["batch x prompt -> new"]
    base = "off" if SPECULATIVE in narrow else "float32" if narrow else "nanovllm"
    for phase in ("prefill", "decode"):
        head.append(f"{phase} {base}")
        head += [f"{phase} transformers", "ratio"] if compare else []
        for name in narrow:
            head += [f"{phase} {name}", "ratio"]
    table = render_table([head] + [_row(r, compare, narrow) for r in results])
    if SPECULATIVE in narrow:
        title += "; ratio = speculation on / off"
    elif narrow:
        title += "; ratio = each precision / float32"
    return "\n".join([title, table])


def format_acceptance(results: list[CellResult]) -> str:
    rows = [r for r in results if r.spec]
    if not rows:
        return ""
    table = [["batch x prompt -> new", "proposed", "accepted", "rate", "mean length",
              "rate by position", "step cost k=1..", "k chosen", "output identical"]]
    for r in rows:
        a = r.spec
        rate = f"{a['accepted'] / a['proposed']:.2f}" if a["proposed"] else "-"
        length = f"{a['mean_acceptance_length']:.2f}" if a["mean_acceptance_length"] else "-"
        total = sum(a["chosen_k"])
        chosen = " ".join(f"{k}:{n / total:.0%}" for k, n in enumerate(a["chosen_k"]) if n)
        table.append([str(r.cell), str(a["proposed"]), str(a["accepted"]), rate, length,
                      " ".join(f"{x:.2f}" for x in a["acceptance_by_position"]) or "-",
                      _step_costs(a), chosen or "-",
                      "-" if a["identical"] is None else "yes" if a["identical"] else "NO"])
    return ("\n\nSpeculation over the timed runs: acceptance (mean length = tokens per "
            "speculating step); the wall time of a whole step proposing k = 1, 2, ... against a "
            "plain step of the batch, as last measured (~: not timed at this batch, a stand-in); "
            "the k each decode chose (share of decodes; a step proposing k pays where "
            "E = 1 + the rates by position up to k beats its step cost)\n" + render_table(table))


def _step_costs(a: dict) -> str:
    return " ".join(("" if timed else "~") + f"{c:.2f}" for c, timed in
                    zip(a["step_cost"][1:], a["step_cost_timed"][1:]))


def _row(r: CellResult, compare: bool, narrow: list[str]) -> list[str]:
    row = [str(r.cell)]
    for metric in ("prefill_tps", "decode_tps"):
        ours = r.summary("nanovllm", metric)
        row.append(ours.fmt(1) if ours else "-")
        sides = [("transformers", "nanovllm", "transformers")] if compare else []
        sides += [(name, name, "nanovllm") for name in narrow]
        for side, num, den in sides:
            other, ratio = r.summary(side, metric), r.ratio(metric, num, den)
            row += [other.fmt(1) if other else "-", f"{ratio:.2f}x" if ratio else "-"]
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmark", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    return run(add_args(parser).parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
