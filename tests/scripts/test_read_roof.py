"""scripts/lab/read_roof.py: a short real run on a tiny Llama checkpoint."""

from __future__ import annotations

import re

from numba import config

from nanovllm.scripts.lab import read_roof


def test_read_roof_reports_every_read_and_chain(llama_ckpt, capsys):
    assert read_roof.main(["--model", str(llama_ckpt("llama-gqa")), "--mb", "8", "--reps", "1"]) == 0
    out = capsys.readouterr().out
    names = ["roofs.py", "numpy sum", "float32 whole chain", "int8 whole chain", "int8 gate_up"]
    if not config.DISABLE_JIT:
        names += ["16-lane read, 1 thread", "16-lane read, 2 threads"]
    for name in names:
        assert re.search(rf"{re.escape(name)}.* MB  best +[\d.]+ GB/s  median +[\d.]+ GB/s", out), name
