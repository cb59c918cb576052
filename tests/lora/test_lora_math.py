"""The batched update (rows grouped by adapter, fused members in their columns) equals PEFT's
formula row by row, through `linear` on every base format, and rows without an adapter are
the base product exactly."""

from __future__ import annotations

import numpy as np
import pytest

from nanovllm.model.layers.linear import linear
from nanovllm.model.lora.apply import row_groups
from nanovllm.model.lora.math import LoRAPair, add_row_updates, lora_delta
from nanovllm.model.weights.adapted import AdaptedWeight
from nanovllm.model.weights.quant import convert_matrix, dequantize, to_bfloat16

RNG = np.random.default_rng(0)
N, IN, OUT = 9, 32, 48


def pair(r: int, cols: slice, scale: float) -> tuple[LoRAPair, np.ndarray, np.ndarray]:
    a = RNG.standard_normal((r, IN)).astype(np.float32)
    b = RNG.standard_normal((cols.stop - cols.start, r)).astype(np.float32)
    return LoRAPair(a, b * np.float32(scale), cols), a, b


def test_row_groups_slices_contiguous_runs():
    groups = row_groups(np.array([0, 2, 2, 0, 5, 0, 5, 1]))
    assert groups[2] == slice(1, 3) and groups[1] == slice(7, 8)
    assert groups[5].tolist() == [4, 6] and 0 not in groups


@pytest.mark.parametrize("dtype,quantization", [("auto", None), ("bfloat16", None),
                                                ("auto", "int8")])
def test_adapted_linear_equals_peft_per_row(dtype, quantization):
    w = convert_matrix(RNG.standard_normal((OUT, IN)).astype(np.float32), dtype, quantization)
    x = RNG.standard_normal((N, IN)).astype(np.float32)
    bias = RNG.standard_normal(OUT).astype(np.float32)
    row_adapters = np.array([1, 0, 2, 2, 1, 0, 0, 2, 1])
    # Adapter 1 adapts the first 16 columns (a "q" of a fused q|k|v), adapter 2 two members.
    p1, a1, b1 = pair(4, slice(0, 16), 2.0)
    p2, a2, b2 = pair(3, slice(16, 32), 0.5)
    p3, a3, b3 = pair(3, slice(32, 48), 0.5)
    groups = row_groups(row_adapters)
    found = [(groups[1], p1), (groups[2], p2), (groups[2], p3)]
    out = linear(x, AdaptedWeight(w, lambda x, out: add_row_updates(x, out, found)), bias)
    base = linear(x, w, bias)
    want = x @ dequantize(w).T + bias
    for i, adapter in enumerate(row_adapters):
        if adapter == 1:
            want[i, :16] += lora_delta(x[i:i + 1], a1, b1, 2.0)[0]
        elif adapter == 2:
            want[i, 16:32] += lora_delta(x[i:i + 1], a2, b2, 0.5)[0]
            want[i, 32:] += lora_delta(x[i:i + 1], a3, b3, 0.5)[0]
        else:
            assert np.array_equal(out[i], base[i])  # no adapter: the base product, untouched
    np.testing.assert_allclose(out, base - x @ dequantize(w).T - bias + want, rtol=1e-5,
                               atol=1e-4)


def test_bfloat16_pairs_are_the_update_of_their_float32_values():
    """A and B in bfloat16 (beside a bfloat16 base): the update is PEFT's formula on the
    float32 values they hold, to float32 rounding."""
    x = RNG.standard_normal((N, IN)).astype(np.float32)
    p, a, b = pair(4, slice(8, 24), 2.0)
    half = LoRAPair(to_bfloat16(p.a), to_bfloat16(p.b), p.cols)
    out = np.zeros((N, OUT), np.float32)
    add_row_updates(x, out, [(slice(1, N), half)])
    want = lora_delta(x[1:], dequantize(half.a), dequantize(half.b), 1.0)
    np.testing.assert_allclose(out[1:, 8:24], want, rtol=1e-5, atol=1e-4)
    assert not out[0].any() and not out[:, :8].any() and not out[:, 24:].any()
    # and within bfloat16's rounding (2**-8 of each value) of the unrounded adapter's
    np.testing.assert_allclose(out[1:, 8:24], lora_delta(x[1:], a, b, 2.0), rtol=0.05, atol=0.3)
