"""Fused matrices of block weights (`model/weights/stacked.py`): members of one type joined
panel-wise when the rows before the last fill whole panels (their bytes from a cache line, as
every packed matrix's), stacked otherwise (a member of 20 rows leaves padding in its last
panel; a member of another type is never converted), and `linear` on either is each member's
product in its slice of the output."""

from __future__ import annotations

import numpy as np

from nanovllm.model.layers.linear import linear
from nanovllm.model.platform.memory import CACHE_LINE
from nanovllm.model.weights.block_quant import BlockWeight, from_float
from nanovllm.model.weights.quant import dequantize
from nanovllm.model.weights.stacked import StackedWeight, join_rows


def member(type_name: str, rows: int, seed: int) -> BlockWeight:
    return from_float(type_name, np.random.default_rng(seed).standard_normal((rows, 256))
                      .astype(np.float32))


def test_members_join_or_stack_and_stand_for_their_rows():
    a, b, c = member("Q4_K", 32, 0), member("Q4_K", 20, 1), member("Q8_0", 20, 2)
    joined = join_rows([a, b])  # 32 rows: two whole panels, then b
    assert isinstance(joined, BlockWeight) and joined.shape == (52, 256)
    for w in (a, b, c, joined):  # the kernels load whole cache lines of it
        assert w.packed.ctypes.data % CACHE_LINE == 0
    ragged = join_rows([b, a])  # b's last panel padded: not joinable
    mixed = join_rows([a, b, c])
    assert isinstance(ragged, StackedWeight) and [p.shape[0] for p in ragged.parts] == [20, 32]
    assert isinstance(mixed, StackedWeight) and [p.type_name for p in mixed.parts] == ["Q4_K",
                                                                                      "Q8_0"]
    for fused, parts in ((joined, [a, b]), (ragged, [b, a]), (mixed, [a, b, c])):
        want = np.concatenate([dequantize(p) for p in parts])
        np.testing.assert_array_equal(dequantize(fused), want)
        x = np.random.default_rng(3).standard_normal((3, 256)).astype(np.float32)
        np.testing.assert_array_equal(linear(x, fused),
                                      np.concatenate([linear(x, p) for p in parts], axis=1))
