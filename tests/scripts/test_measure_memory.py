"""scripts/lab/measure_memory.py: a short real run on the tiny checkpoint."""

from __future__ import annotations

import re

from nanovllm.scripts.lab import measure_memory


def test_measure_memory_reports_rss_against_weights_and_pool(tiny_ckpt, capsys):
    assert measure_memory.main(["--model", str(tiny_ckpt), "--batch", "3", "--long-prompt", "40"]) == 0
    out = capsys.readouterr().out
    pool = float(re.search(r"fp32 weights [\d.]+ MiB, KV pool (\d+) MiB", out).group(1))
    rss = float(re.search(r"after a 40-token prompt: RSS (\d+) MiB", out).group(1))
    ratio = float(re.search(r"\(RSS - KV pool\) / weights = ([\d.]+)", out).group(1))
    assert rss > pool  # the pool is touched at start-up, so it is resident
    assert ratio > 1  # the interpreter and libraries alone outweigh a tiny model


def test_int8_weights_are_a_quarter_of_the_bytes(tiny_ckpt, capsys):
    argv = ["--model", str(tiny_ckpt), "--batch", "2", "--long-prompt", "20"]
    sizes = {}
    for options in ([], ["--quantization", "int8"], ["--dtype", "bfloat16"]):
        assert measure_memory.main(argv + options) == 0
        line = re.search(r"weights as stored \((\w+)\): ([\d.]+) MiB", capsys.readouterr().out)
        sizes[line.group(1)] = float(line.group(2))
    # matrices shrink to 1/4 and 1/2; biases, layer norms, positions and scales stay float32
    assert sizes["int8"] < 0.4 * sizes["float32"] and sizes["bfloat16"] < 0.6 * sizes["float32"]
