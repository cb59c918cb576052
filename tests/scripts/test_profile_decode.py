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
