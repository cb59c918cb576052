"""scripts/measure_memory.py: a short real run on the tiny checkpoint."""

from __future__ import annotations

import re

from nanovllm.scripts import measure_memory


def test_measure_memory_reports_rss_against_weights_and_pool(tiny_ckpt, capsys):
    assert measure_memory.main(["--model", str(tiny_ckpt), "--batch", "3", "--long-prompt", "40"]) == 0
    out = capsys.readouterr().out
    pool = float(re.search(r"fp32 weights [\d.]+ MiB, KV pool (\d+) MiB", out).group(1))
    rss = float(re.search(r"after a 40-token prompt: RSS (\d+) MiB", out).group(1))
    ratio = float(re.search(r"\(RSS - KV pool\) / weights = ([\d.]+)", out).group(1))
    assert rss > pool  # the pool is touched at start-up, so it is resident
    assert ratio > 1  # the interpreter and libraries alone outweigh a tiny model
