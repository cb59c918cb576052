"""GGUF files we cannot run are refused at start-up in one line naming the file and what is wrong
(the architecture, the tensor and its type, the truncation) and what is supported: `nanovllm
serve` exits 2 with no traceback and no server; `LLM(...)` raises a CheckpointError."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nanovllm import LLM
from nanovllm.model import CheckpointError

REPO = Path(__file__).resolve().parent.parent


def write(path: Path, arch: str, tensors: dict) -> Path:
    """A GGUF of `arch` holding `tensors` (name -> array, or (raw bytes, type))."""
    import gguf

    writer = gguf.GGUFWriter(path, arch)
    writer.add_block_count(1)
    for name, value in tensors.items():
        if isinstance(value, tuple):
            raw, kind = value
            writer.add_tensor(name, raw, raw_dtype=kind)
        else:
            writer.add_tensor(name, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def iq2_tensor():
    """One IQ2_XXS matrix [8, 256]: 66 bytes a block of 256 weights."""
    import gguf

    return np.zeros((8, 66), np.uint8), gguf.GGMLQuantizationType.IQ2_XXS


def cases(tmp_path: Path, gguf_file) -> dict[str, tuple[Path, list[str]]]:
    """name -> (a file we cannot run, what its one line must say)."""
    _, good = gguf_file("gpt2")
    data = good.read_bytes()
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(data[:len(data) // 2])
    text = tmp_path / "notes.gguf"
    text.write_text("these are not weights\n")
    return {
        "architecture": (write(tmp_path / "mamba.gguf", "mamba",
                               {"token_embd.weight": np.zeros((4, 8), np.float32)}),
                         ["'mamba'", "not supported", "llama, qwen2, qwen3, gpt2"]),
        "tensor type": (write(tmp_path / "iq2.gguf", "llama",
                              {"blk.0.attn_q.weight": iq2_tensor()}),
                        ["blk.0.attn_q.weight", "IQ2_XXS", "supported: F32, F16, BF16, Q8_0"]),
        "truncated": (truncated, ["truncated"]),
        "not gguf": (text, ["not a GGUF file"]),
    }


@pytest.mark.parametrize("case", ["architecture", "tensor type", "truncated", "not gguf"])
def test_serve_refuses_in_one_line_with_exit_2(tmp_path, gguf_file, case):
    path, says = cases(tmp_path, gguf_file)[case]
    got = subprocess.run([sys.executable, "-m", "nanovllm.cli", "serve", str(path),
                          "--port", "9"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert got.returncode == 2
    errors = [line for line in got.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "Traceback" not in got.stderr
    assert str(path) in errors[0]
    for words in says:
        assert words in errors[0]


@pytest.mark.parametrize("case", ["architecture", "tensor type", "truncated", "not gguf"])
def test_llm_raises_a_checkpoint_error(tmp_path, gguf_file, case):
    path, says = cases(tmp_path, gguf_file)[case]
    with pytest.raises(CheckpointError, match=says[0].replace("(", r"\(")):
        LLM(str(path), num_kv_blocks=16)


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.gguf"):
        LLM(str(tmp_path / "missing.gguf"))


def test_a_directory_of_several_files_asks_which(tmp_path, gguf_file):
    _, good = gguf_file("gpt2")
    for name in ("a.gguf", "b.gguf"):
        (tmp_path / name).write_bytes(good.read_bytes())
    with pytest.raises(CheckpointError, match="a.gguf, b.gguf"):
        LLM(str(tmp_path))
