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


def test_a_grouped_query_llama_reports_its_key_value_heads(llama_ckpt, capsys):
    """llama-gqa: 2 layers x 2 key/value heads (of 4 query heads) x 16 dims x K and V x 4 bytes;
    its float32 weights are counted once each, the untied LM head too."""
    from nanovllm.model.architectures.registry import read_config

    model = llama_ckpt("llama-gqa")
    assert measure_memory.main(["--model", str(model), "--batch", "2", "--long-prompt", "20"]) == 0
    out = capsys.readouterr().out
    assert "KV cache 512 bytes per token (2 layers x 2 key/value heads x 16); GPT-2 124M's: 73,728" in out
    stored = float(re.search(r"weights as stored \(float32\): ([\d.]+) MiB", out).group(1))
    assert abs(stored - read_config(model).num_params * 4 / 2**20) <= 0.005
