"""The compiled repack of block codes (`block_quant.interleave_panels`) against its numpy
reference (`interleave_codes` of `to_panels`) on every layout, with a last panel cut short."""

from __future__ import annotations

import numpy as np
import pytest

from nanovllm.model.weights.block_quant import (
    LAYOUTS,
    interleave_codes,
    interleave_panels,
    to_panels,
)


@pytest.mark.parametrize("type_name", LAYOUTS)
@pytest.mark.parametrize("rows", [16, 37])
def test_interleave_panels_is_the_reference(type_name, rows):
    layout = LAYOUTS[type_name]
    supers = 3
    rng = np.random.default_rng(rows)
    codes = rng.integers(0, 2 ** min(layout.bits, 8), (rows, supers * layout.span), np.uint8)
    want = interleave_codes(to_panels(codes.reshape(rows, supers, layout.span)), layout)
    np.testing.assert_array_equal(interleave_panels(codes, layout), want)
