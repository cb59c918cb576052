"""scripts/lab/profile_prefill.py: a short real run on the tiny checkpoint."""

from __future__ import annotations

import re

from nanovllm.scripts.lab import profile_prefill


def test_profile_prefill_reports_the_non_gemm_share_of_both_precisions(tiny_ckpt, capsys):
    assert profile_prefill.main(["--model", str(tiny_ckpt), "--length", "40", "--reps", "1"]) == 0
    out = capsys.readouterr().out
    for name in ("float32", "int8"):
        assert re.search(rf"{name}: prefill 40 in [\d.]+ ms .* weight GEMMs alone [\d.]+ ms; "
                         r"everything else -?[\d.]+ ms = -?\d+% of the prefill", out)
    assert re.search(r"int8 / float32: prefill [\d.]+x, weight GEMMs alone [\d.]+x", out)
