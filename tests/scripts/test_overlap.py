"""scripts/lab/overlap.py: a short real run, small enough for any machine."""

from __future__ import annotations

import re

import pytest
from numba import config

from nanovllm.scripts.lab import overlap


@pytest.mark.skipif(config.DISABLE_JIT, reason="the bare read it compares with is LLVM IR")
def test_overlap_times_a_product_and_the_plain_loop_hot_and_cold(capsys):
    assert overlap.main(["--shape", "64x256", "--copies", "3", "--rounds", "0", "1",
                         "--reps", "1"]) == 0
    out = capsys.readouterr().out
    number = r"[\d.]+"
    line = (rf"hot {number} us, cold {number} us; the read alone {number} us: cold is "
            rf"{number}x the longer of the two, {number}x their sum")
    assert re.search(rf"Q4_0 64x256 one-row product on \w+ \({number} MB\): {line}", out)
    assert len(re.findall(rf"plain loop, [01] rounds a byte: {line}", out)) == 2
