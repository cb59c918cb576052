"""scripts/lab/perf_targets.py: the project's targets, judged on a report of `nanovllm bench
offline --json` (the benchmark itself prints no goals)."""

from __future__ import annotations

import json

import pytest

from nanovllm.scripts import benchmark
from nanovllm.scripts.benchmark import Cell, CellResult, Run
from nanovllm.scripts.lab.perf_targets import (
    GPT2_124M,
    evaluate,
    evaluate_precisions,
    format_precision_targets,
    format_targets,
    main,
)


def report(results: list[CellResult], **model) -> dict:
    """What `nanovllm bench offline --json` writes, for these results."""
    return {"model": {**GPT2_124M, **model},
            "results": [benchmark._result_json(r) for r in results]}


def test_targets_are_judged_on_gpt2_124m_shapes_only():
    results = [  # decode batch 1: 100 tok/s but only 2x transformers; batch 64 at 500 tok/s
        CellResult(Cell(1, 32, 128), ours=[Run(0.1, 1.27, 32, 127)], theirs=[Run(0.2, 2.54, 32, 127)]),
        CellResult(Cell(64, 32, 128), ours=[Run(1.0, 16.256, 2048, 8128)]),
        CellResult(Cell(1, 512, 1), ours=[Run(0.25, None, 512, 0)]),
    ]
    entries = evaluate(report(results))
    assert [(e["target"], e["met"]) for e in entries] == [
        ("decode, batch 1", False), ("decode, batch 64", False), ("prefill, 1 x 512", True)]
    assert entries[0]["measured_tps"] == pytest.approx(100.0)
    assert entries[0]["vs_transformers"] == pytest.approx(2.0)
    assert entries[1]["measured_tps"] == pytest.approx(500.0)
    table = format_targets(entries)
    assert ">= 2.3x transformers" in table and "53%" in table and "not met" in table
    assert "scripts/lab/profile_decode.py" in table  # the targets this benchmark does not measure
    assert evaluate(report(results, n_layer=2)) == [] and format_targets([]) == ""
    fast_alone = [CellResult(Cell(1, 32, 128), ours=[Run(0.1, 1.27, 32, 127)])]  # no transformers
    entries = evaluate(report(fast_alone))
    assert entries[0]["met"] is None and "needs --compare transformers" in format_targets(entries)


def test_precision_targets_are_ratios_to_float32():
    fp32 = [Run(0.1, 1.27, 32, 127)]  # decode 100 tok/s
    results = [CellResult(Cell(1, 32, 128), ours=fp32, narrow={
        "int8": [Run(0.1, 0.45, 32, 127)], "bfloat16": [Run(0.1, 0.847, 32, 127)]})]
    entries = evaluate_precisions(report(results))
    assert [(e["precision"], round(e["ratio"], 2), e["met"]) for e in entries] == [
        ("int8", 2.82, True), ("bfloat16", 1.5, False)]
    table = format_precision_targets(entries)
    assert ">= 2.8x" in table and "not met" in table and "AVX512_BF16" in table
    assert evaluate_precisions(report(results, n_embd=64)) == []
    assert format_precision_targets([]) == ""


def test_main_reads_a_report(tmp_path, capsys):
    results = [CellResult(Cell(64, 32, 128), ours=[Run(1.0, 8.0, 2048, 8128)])]  # 1,016 tok/s
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(report(results)))
    assert main([str(path)]) == 0
    assert "decode, batch 64" in capsys.readouterr().out
    path.write_text(json.dumps(report(results, n_layer=2)))
    assert main([str(path)]) == 0
    assert "no target applies" in capsys.readouterr().out
