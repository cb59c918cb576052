"""`nanovllm bench prefix-cache-dir` runs end to end on a small model and prints its table."""

from __future__ import annotations

from nanovllm.cli import main


def test_bench_prefix_cache_dir_prints_both_times(tiny_ckpt, tmp_path, capsys):
    assert main(["bench", "prefix-cache-dir", "--model", str(tiny_ckpt), "--prefix-len", "64",
                 "--question-len", "8", "--rounds", "1", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "64-token shared prefix + 8-token new question" in out
    assert "prefix computed" in out and "prefix read from disk" in out
    assert list(tmp_path.rglob("*.kvb"))


def test_bench_prefix_cache_dir_refuses_a_prompt_longer_than_the_model(tiny_ckpt, capsys):
    assert main(["bench", "prefix-cache-dir", "--model", str(tiny_ckpt), "--prefix-len",
                 "400"]) == 2
    assert "context" in capsys.readouterr().err
