"""GGML's block formats (`model/weights/block_quant.py`): the plain dequantization of every type
equal to llama.cpp's own reader (`gguf.quants`) on random blocks, and the quantizers equal to
its reference quantizers where `gguf` has them, within their rounding where it does not."""

from __future__ import annotations

import numpy as np
import pytest

from nanovllm.model.weights.ggml_blocks import (
    BLOCK_TYPES,
    QUANTIZABLE,
    as_blocks,
    dequantize_blocks,
    quantize,
)

gguf = pytest.importorskip("gguf")
from gguf.quants import dequantize as gguf_dequantize  # noqa: E402
from gguf.quants import quantize as gguf_quantize  # noqa: E402

# Bytes of each type's float16 fields (random bytes there could be inf or NaN).
HALVES = {"Q8_0": (0,), "Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2),
          "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}


def random_blocks(type_name: str, rows: int, blocks_per_row: int, seed: int) -> np.ndarray:
    """uint8 [rows, bytes per row] of random codes, with finite float16 scales."""
    kind = BLOCK_TYPES[type_name]
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, (rows * blocks_per_row, kind.bytes), dtype=np.uint8)
    for at in HALVES[type_name]:
        scale = rng.standard_normal((raw.shape[0], 1)) * 0.1
        raw[:, at:at + 2] = scale.astype(np.float16).view(np.uint8)
    return raw.reshape(rows, blocks_per_row * kind.bytes)


def test_block_sizes_are_ggmls():
    assert set(HALVES) == set(BLOCK_TYPES)
    for name, kind in BLOCK_TYPES.items():
        assert gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[name]] == kind


@pytest.mark.parametrize("type_name", list(BLOCK_TYPES))
def test_dequantize_equals_gguf(type_name):
    kind = BLOCK_TYPES[type_name]
    raw = random_blocks(type_name, 5, 3, seed=len(type_name) + kind.bytes)
    shape = (5, 3 * kind.weights)
    expected = gguf_dequantize(raw, gguf.GGMLQuantizationType[type_name]).reshape(shape)
    got = dequantize_blocks(type_name, raw, shape)
    assert got.dtype == np.float32 and got.shape == shape
    np.testing.assert_array_equal(got, expected)


def test_dequantize_reads_a_read_only_memmap(tmp_path):
    raw = random_blocks("Q4_K", 2, 2, seed=3)
    path = tmp_path / "blocks.bin"
    raw.tofile(path)
    mapped = np.memmap(path, np.uint8, "r", shape=raw.shape)
    np.testing.assert_array_equal(dequantize_blocks("Q4_K", mapped, (2, 512)),
                                  dequantize_blocks("Q4_K", raw, (2, 512)))


def test_wrong_sizes_and_types_are_refused():
    raw = random_blocks("Q4_0", 2, 2, seed=0)
    with pytest.raises(ValueError, match="bytes expected"):
        as_blocks("Q4_0", raw, (3, 64))
    with pytest.raises(ValueError, match="whole blocks"):
        as_blocks("Q4_0", raw, (2, 48))
    with pytest.raises(ValueError, match="IQ2_XS.*supported: Q8_0"):
        dequantize_blocks("IQ2_XS", raw, (2, 64))


@pytest.mark.parametrize("type_name", ["Q8_0", "Q4_0"])
def test_quantize_equals_gguf(type_name):
    w = np.random.default_rng(1).standard_normal((6, 256)).astype(np.float32)
    w[1] = 0.0  # an all-zero row: scale 0, no division by zero
    w[2, :32] = 1.0  # ties
    expected = gguf_quantize(w, gguf.GGMLQuantizationType[type_name])
    np.testing.assert_array_equal(quantize(type_name, w), expected)


def test_q4_k_quantize_is_within_a_step_and_round_trips_through_gguf():
    """Each weight comes back within one step of its sub-block (its range / 15: half a step
    for the code's rounding, the rest for the 6-bit step and offset), and the bytes read back
    through gguf's dequantizer as through ours."""
    rng = np.random.default_rng(2)
    w = (rng.standard_normal((4, 512)) * rng.uniform(0.01, 3, (4, 1))).astype(np.float32)
    w[1, :256] = np.abs(w[1, :256])  # a super-block whose sub-blocks are all positive
    w[2] = 0.0
    raw = quantize("Q4_K", w)
    assert raw.shape == (4, 2 * BLOCK_TYPES["Q4_K"].bytes)
    back = dequantize_blocks("Q4_K", raw, w.shape)
    np.testing.assert_array_equal(
        back, gguf_dequantize(raw, gguf.GGMLQuantizationType.Q4_K).reshape(w.shape))
    sub = w.reshape(-1, 32)
    step = (sub.max(axis=1) - np.minimum(sub.min(axis=1), 0)) / 15
    assert np.all(np.abs(back - w).reshape(-1, 32) <= step[:, None] * 1.01 + 1e-7)
    assert np.all(back[2] == 0)


def test_quantize_refuses_what_it_does_not_write():
    assert QUANTIZABLE == ("Q8_0", "Q4_0", "Q4_K")
    with pytest.raises(ValueError, match="Q6_K"):
        quantize("Q6_K", np.zeros((1, 256), np.float32))
    with pytest.raises(ValueError, match="whole 256"):
        quantize("Q4_K", np.zeros((1, 32), np.float32))
