"""scripts/lab/isa_peaks.py: each product loop this CPU runs does the work it counts."""

from __future__ import annotations

import re

import numpy as np
import pytest

from nanovllm.scripts.lab import isa_peaks

RUNNABLE = [p for p in isa_peaks.PROBES if isa_peaks.runnable(p, isa_peaks.host_features())]


@pytest.fixture(scope="module")
def compiled():
    return isa_peaks.Compiled()


@pytest.mark.parametrize("probe", RUNNABLE, ids=lambda p: p.name)
@pytest.mark.parametrize("n", [1, 7, 1000])
def test_probe_sums_equal_numpys(compiled, probe, n):
    """n iterations leave n products of every weight vector in its sum: none merged, none
    skipped (a probe that did less would be faster, not wrong-looking, without this check)."""
    fn = compiled.function(probe)
    w, x = isa_peaks.operands(probe, np.random.default_rng(n))
    _, out = isa_peaks.run(fn, probe, n, w, x)
    np.testing.assert_array_equal(out, isa_peaks.reference(probe, n, w, x))


def test_reference_sees_a_changed_weight():
    """The reference depends on every weight byte (so the check above can fail)."""
    probe = isa_peaks.PROBES[0]
    w, x = isa_peaks.operands(probe, np.random.default_rng(0))
    before = isa_peaks.reference(probe, 3, w, x)
    w[2, 5] = w[2, 5] + 1 if w[2, 5] < 127 else 126
    assert not np.array_equal(before, isa_peaks.reference(probe, 3, w, x))


def test_main_reports_every_probe(capsys):
    assert isa_peaks.main(["--reps", "1", "--seconds", "0.01"]) == 0
    out = capsys.readouterr().out
    for probe in isa_peaks.PROBES:
        if probe in RUNNABLE:
            assert re.search(rf"{probe.name}: +[\d.]+ G multiply-adds/s", out), probe.name
        else:
            assert f"{probe.name}: not on this CPU" in out
    kernel = isa_peaks.host_int8_kernel()
    if isa_peaks.KERNEL_PROBES.get(kernel) in {p.name for p in RUNNABLE}:
        assert f"this CPU's W8A8 kernel: {kernel}" in out  # the bound on int8 / float32
    if "bf16dp512" in {p.name for p in RUNNABLE}:
        assert "this CPU's bfloat16 kernel: avx512bf16 (bf16dp512), at most " in out
