"""scripts/lab/snapshot_cost.py: a short real run on the tiny checkpoint."""

from __future__ import annotations

import re

from nanovllm.scripts.lab import snapshot_cost


def test_snapshot_cost_reports_the_share_of_a_step(tiny_ckpt, capsys):
    assert snapshot_cost.main(["--model", str(tiny_ckpt), "--batch", "3", "--context", "40",
                               "--steps", "2", "--num-kv-blocks", "64"]) == 0
    line = capsys.readouterr().out
    assert re.search(r"batch 3, context ~40, 64 KV blocks: step [\d.]+ ms, snapshot [\d.]+ us = "
                     r"[\d.]+% of a step", line), line
