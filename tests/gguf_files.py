"""GGUF files for tests, written by llama.cpp's own converter, `convert_hf_to_gguf.py`, from the
tiny HF checkpoints the tests make (`llama_checkpoints.py`, `write_dummy_checkpoint`).

The converter is pure Python (torch, transformers, sentencepiece and its own copy of the `gguf`
package); it ships in llama-cpp-python's source package on PyPI, under vendor/llama.cpp, which
`converter_dir` fetches with pip once into the cache. Without PyPI it returns None (tests skip).

It names a byte-level BPE's pre-tokenizer by the hash of the original tokenizer's ids on a fixed
text, known only for published tokenizers; the tests' own tokenizers are cut-down GPT-2 ones, so
`convert` states the name (`pre`) instead, exactly where the converter would have written its
guess. Everything else in the file is the converter's.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

SDIST = "llama-cpp-python==0.3.36"
VENDOR = "vendor/llama.cpp/"
KEEP = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")

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


def converter_dir(cache: Path) -> Path | None:
    """llama.cpp's converter, extracted from llama-cpp-python's sdist into `cache` once; None
    when pip cannot fetch it."""
    out = cache / "llama.cpp-converter"
    if (out / "convert_hf_to_gguf.py").exists():
        return out
    with tempfile.TemporaryDirectory() as tmp:
        got = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary",
                              ":all:", "-d", tmp, SDIST],
                             capture_output=True, text=True)
        archives = list(Path(tmp).glob("*.tar.gz"))
        if got.returncode or not archives:
            return None
        staging = Path(tempfile.mkdtemp(dir=cache))
        with tarfile.open(archives[0]) as tar:
            for member in tar.getmembers():
                rel = member.name.split("/", 1)[-1]
                if rel.startswith(VENDOR) and rel[len(VENDOR):].startswith(KEEP):
                    member.name = rel[len(VENDOR):]
                    tar.extract(member, staging, filter="data")
        try:
            staging.rename(out)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)  # another process got there first
    return out


def convert(converter: Path, hf_dir: Path, out: Path, outtype: str = "f32",
            pre: str | None = None) -> Path:
    """`convert_hf_to_gguf.py hf_dir --outfile out --outtype outtype` (f32, f16, bf16, q8_0)."""
    got = subprocess.run([sys.executable, "-c", RUNNER, str(converter), str(hf_dir), str(out),
                          outtype, pre or ""], capture_output=True, text=True)
    if got.returncode:
        raise RuntimeError(f"convert_hf_to_gguf.py failed:\n{got.stderr[-3000:]}")
    return out
