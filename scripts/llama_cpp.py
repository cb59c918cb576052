"""llama.cpp's own tools, as `nanovllm bench offline --compare llama.cpp` runs them: its converter
(`convert_hf_to_gguf.py`) and `llama-quantize` make the GGUF files both sides load, `llama-bench`
times batch-1 decode and prefill on them, `llama-batched-bench` (where built) batched decode.

The tools are found in a llama.cpp source tree built with cmake (`--llama-cpp-dir` or the
LLAMA_CPP_DIR environment variable: its build/bin/ holds the programs, its top level the
converter), or else on PATH. A tool that is missing is named, with where it was looked for.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ENV = "LLAMA_CPP_DIR"
CONVERTER = "convert_hf_to_gguf.py"
BIN_DIRS = ("build/bin", "bin", ".")  # where a cmake build (or an install) puts the programs
# The converter's types and llama-quantize's: the file quantized from is always float16.
QUANT_TYPES = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M",
               "Q6_K", "F16", "BF16", "F32")

# Runs the converter with a byte-level BPE's pre-tokenizer named (`pre`) instead of guessed: it
# recognises only published tokenizers by a hash of their ids, and random-weight checkpoints
# carry a cut-down GPT-2 one.
RUNNER = """
import runpy, sys
conv, model, out, outtype, pre = sys.argv[1:6]
sys.path[:0] = [conv + "/gguf-py", conv]
import conversion.base
if pre:
    conversion.base.TextModel.get_vocab_base_pre = lambda self, tokenizer: pre
sys.argv = ["convert_hf_to_gguf.py", model, "--outfile", out, "--outtype", outtype]
runpy.run_path(conv + "/convert_hf_to_gguf.py", run_name="__main__")
"""


class MissingTool(RuntimeError):
    """A llama.cpp tool the comparison needs is not there (the message names it)."""


@dataclass(frozen=True, slots=True)
class LlamaCppTools:
    bench: Path
    quantize: Path | None        # needed only to make files from a checkpoint
    batched_bench: Path | None   # optional: batched decode is then ours alone
    converter: Path | None       # the directory holding convert_hf_to_gguf.py


def find_tools(root: str | None = None) -> LlamaCppTools:
    """The tools under `root` (or $LLAMA_CPP_DIR), else on PATH; MissingTool if llama-bench is
    nowhere."""
    root = root or os.environ.get(ENV)
    base = Path(root).expanduser() if root else None
    if base is not None and not base.is_dir():
        raise MissingTool(f"llama.cpp directory {base} does not exist")
    bench = _program("llama-bench", base)
    if bench is None:
        where = f"under {base} ({', '.join(BIN_DIRS)})" if base else "on PATH"
        raise MissingTool(
            f"llama-bench not found {where}: build llama.cpp (cmake -B build && cmake --build "
            f"build --target llama-bench llama-quantize llama-batched-bench) and pass "
            f"--llama-cpp-dir DIR or set {ENV}")
    converter = base if base and (base / CONVERTER).is_file() else None
    return LlamaCppTools(bench, _program("llama-quantize", base),
                         _program("llama-batched-bench", base), converter)


def _program(name: str, base: Path | None) -> Path | None:
    if base is not None:
        found = [base / d / name for d in BIN_DIRS if (base / d / name).is_file()]
        return found[0] if found else None
    found = shutil.which(name)
    return Path(found) if found else None


def _run(cmd: list, what: str) -> str:
    got = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    if got.returncode:
        raise RuntimeError(f"{what} failed (exit {got.returncode}):\n{got.stderr[-2000:]}")
    return got.stdout + got.stderr


# --------------------------------------------------------------------------- files


def convert(converter: Path, hf_dir: Path, out: Path, outtype: str = "f16",
            pre: str | None = None) -> Path:
    """`convert_hf_to_gguf.py hf_dir --outfile out --outtype outtype` (f32, f16, bf16, q8_0),
    with the pre-tokenizer `pre` if given (see RUNNER)."""
    _run([sys.executable, "-c", RUNNER, converter, hf_dir, out, outtype, pre or ""],
         CONVERTER)
    return out


def quantize(tool: Path, src: Path, dst: Path, kind: str, threads: int) -> Path:
    _run([tool, src, dst, kind, threads], "llama-quantize")
    return dst


def gguf_files(tools: LlamaCppTools, hf_dir: Path, kinds: list[str], out_dir: Path,
               threads: int, pre: str | None = None, log=print) -> dict[str, Path]:
    """One GGUF file per type in `kinds`, made once from `hf_dir` (converted to F16, then
    quantized) and kept in `out_dir`, named by the checkpoint's directory name and the type."""
    missing = [n for n, t in (("convert_hf_to_gguf.py (in --llama-cpp-dir)", tools.converter),
                              ("llama-quantize", tools.quantize)) if t is None]
    if missing:
        raise MissingTool(f"making GGUF files from {hf_dir} needs {' and '.join(missing)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    f16 = out_dir / f"{hf_dir.name}-F16.gguf"
    if not f16.is_file():
        log(f"converting {hf_dir} to {f16}")
        convert(tools.converter, hf_dir, _partial(f16), "f16", pre).rename(f16)
    files = {}
    for kind in kinds:
        files[kind] = out_dir / f"{hf_dir.name}-{kind}.gguf"
        if not files[kind].is_file() and kind != "F16":
            log(f"quantizing to {files[kind]}")
            quantize(tools.quantize, f16, _partial(files[kind]), kind, threads).rename(files[kind])
    return files


def _partial(path: Path) -> Path:
    """Where a file is written before it is renamed into place (an interrupted run leaves no
    half file under the real name)."""
    return path.with_name(path.name + ".partial")


# --------------------------------------------------------------------------- timing


@dataclass(frozen=True, slots=True)
class LlamaBenchRun:
    prefill_tps: float | None  # pp<prompt>
    decode_tps: float | None   # tg<n>


def llama_bench(tools: LlamaCppTools, gguf: Path, threads: int, prefill_len: int,
                decode_len: int) -> LlamaBenchRun:
    """One repetition of `llama-bench -t threads -p prefill_len -n decode_len` (0: not run)."""
    text = _run([tools.bench, "-m", gguf, "-t", threads, "-p", prefill_len, "-n", decode_len,
                 "-r", 1, "-o", "jsonl"], "llama-bench")
    return parse_llama_bench(text)


def parse_llama_bench(text: str) -> LlamaBenchRun:
    """llama-bench's JSON Lines: one test a line, n_prompt > 0 for pp, n_gen > 0 for tg."""
    prefill = decode = None
    for record in _json_lines(text):
        if record.get("n_gen"):
            decode = float(record["avg_ts"])
        elif record.get("n_prompt"):
            prefill = float(record["avg_ts"])
    return LlamaBenchRun(prefill, decode)


def batched_bench(tools: LlamaCppTools, gguf: Path, threads: int, prompt_len: int,
                  decode_len: int, batch_sizes: list[int]) -> dict[int, float]:
    """`llama-batched-bench` with B sequences of prompt_len tokens generating decode_len each:
    decode tokens per second (all sequences) by B; {} where it is not built."""
    if tools.batched_bench is None or not batch_sizes:
        return {}
    context = max(batch_sizes) * (prompt_len + decode_len)
    text = _run([tools.batched_bench, "-m", gguf, "-t", threads, "-tb", threads, "-c", context,
                 "-b", 2048, "-ub", 512, "-npp", prompt_len, "-ntg", decode_len, "-npl",
                 ",".join(map(str, batch_sizes)), "--output-format", "jsonl"],
                "llama-batched-bench")
    return parse_batched_bench(text)


def parse_batched_bench(text: str) -> dict[int, float]:
    """llama-batched-bench's JSON Lines: `pl` sequences, `speed_tg` their decode tokens/s."""
    return {int(r["pl"]): float(r["speed_tg"]) for r in _json_lines(text) if "speed_tg" in r}


def _json_lines(text: str) -> list[dict]:
    records = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records
