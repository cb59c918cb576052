"""The token embedding's lookup: the rows of a table in any weight format, by token id.

A block-quantized table (a GGUF file's) is read a row's lane of its panel at a time by a
compiled pass (`block_gemm.take_lanes`): a step looks up a row or a few, and unpacking their
whole panels, as the format's own `take` does, costs more than the row.
"""

from __future__ import annotations

import numpy as np

from nanovllm.model.kernels.block_gemm import take_lanes
from nanovllm.model.weights.block_quant import BlockWeight
from nanovllm.model.weights.quant import Weight, gather_rows


def embedding_rows(table: Weight, ids: np.ndarray) -> np.ndarray:
    """table[ids] as a new float32 array."""
    if isinstance(table, BlockWeight):
        return take_lanes(table, ids)
    return gather_rows(table, ids)
