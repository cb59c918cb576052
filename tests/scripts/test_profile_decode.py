"""scripts/lab/profile_decode.py: a short real run on the tiny checkpoint."""

from __future__ import annotations

import re

import pytest

from nanovllm.scripts.lab import profile_decode


@pytest.mark.parametrize("kv_cache_dtype", ["auto", "float16"])
def test_profile_decode_reports_the_non_gemm_share(tiny_ckpt, capsys, kv_cache_dtype):
    assert profile_decode.main(["--model", str(tiny_ckpt), "--batch", "3", "--context", "40",
                                "--steps", "2", "--kv-cache-dtype", kv_cache_dtype]) == 0
    line = capsys.readouterr().out
    assert re.search(r"batch 3, context ~40: step [\d.]+ ms .* weight GEMMs alone [\d.]+ ms", line)
    assert re.search(r"= -?\d+% of the step", line)


def test_profile_decode_times_a_llama_checkpoint(llama_ckpt, capsys):
    """The weight-GEMM chain of the Llama family: fused q/k/v, o, fused gate/up, down, LM head."""
    assert profile_decode.main(["--model", str(llama_ckpt("llama-gqa")), "--batch", "2",
                                "--context", "40", "--steps", "2", "--roof"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"batch 2, context ~40: step [\d.]+ ms .* weight GEMMs alone [\d.]+ ms", out)
    assert re.search(r"weights [\d.]+ MB a step: streamed at [\d.]+ GB/s .* memory roof "
                     r"[\d.]+ GB/s", out)
    # the floor: the same matrices read with no arithmetic, plus the rest of the step
    bare = re.search(r"read bare, matrix by matrix: ([\d.]+) ms \(([\d.]+) GB/s\); .* a step "
                     r"takes at least ([\d.]+) ms", out)
    assert bare and float(bare[2]) > 0 and float(bare[3]) >= float(bare[1])  # (never under the read)


def test_profile_decode_times_the_int8_weights(tiny_ckpt, capsys):
    """--quantization int8: the step and the chain both on the W8A8 weights."""
    assert profile_decode.main(["--model", str(tiny_ckpt), "--batch", "1", "--context", "40",
                                "--steps", "2", "--quantization", "int8"]) == 0
    assert re.search(r"batch 1, context ~40: step [\d.]+ ms .* weight GEMMs alone [\d.]+ ms",
                     capsys.readouterr().out)


def test_profile_decode_floors_a_batch_step(tiny_ckpt, capsys):
    """--floor-rows: the products at a wide GEMM's rate plus the KV cache read at the roof."""
    assert profile_decode.main(["--model", str(tiny_ckpt), "--batch", "2", "--context", "40",
                                "--steps", "2", "--floor-rows", "8"]) == 0
    floor = re.search(r"products at 8 rows' rate \(([\d.]+) ms for 8\): ([\d.]+) ms for 2 .* "
                      r"memory roof \(\d+ MB at [\d.]+ GB/s\): ([\d.]+) ms; a step takes at "
                      r"least ([\d.]+) ms", capsys.readouterr().out)
    assert floor and float(floor[4]) >= float(floor[3])
