"""The `nanovllm` command: user errors are one line on stderr and exit 2, never a traceback."""

from __future__ import annotations

import pytest

from nanovllm.cli import main


@pytest.mark.parametrize("args, message", [
    (["--block-size", "0"], "block_size must be a positive integer, got 0"),
    (["--max-model-len", "5000"], "max_model_len=5000 exceeds the model's n_positions=256"),
])
def test_bad_engine_flags_are_one_line(tiny_ckpt, capsys, args, message):
    assert main(["generate", str(tiny_ckpt), "hello", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"nanovllm generate: error: {message}"


def test_missing_local_model_says_so_in_one_line(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["generate", "no/such-dir", "hello"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nor is there a local directory 'no/such-dir'" in err


def test_generate_prints_completions(tiny_ckpt, capsys):
    assert main(["generate", str(tiny_ckpt), "hello", "--max-tokens", "3",
                 "--num-kv-blocks", "64"]) == 0
    out = capsys.readouterr()
    assert out.out.startswith("'hello' -> ") and "[length]" in out.out
    assert "RANDOM WEIGHTS" in out.err
