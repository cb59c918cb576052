"""Fused matrices (q|k|v, gate|up) whose members are stored in different ways.

A loader fuses a layer's query, key and value rows into one matrix, and its gate and up rows
into another (`join_rows`). From a checkpoint of float32 arrays that is a concatenation. A GGUF
file's block-quantized members arrive repacked one tensor at a time (`BlockWeight`): members of
one type are joined panel by panel, exactly, when every member but the last fills whole panels
of rows (a block never spans rows, so nothing else changes). A K-quant file mixes types inside
a fusion (Q4_K_M keeps v in Q6_K, q and k in Q4_K), and converting one type into another is not
exact: such a matrix is a `StackedWeight`, each run of one kind stored as it is, `linear`
multiplying by each into its slice of the output.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nanovllm.model.weights.block_quant import PANEL, BlockWeight, empty_packed


@dataclass(slots=True)
class StackedWeight:
    parts: list  # of weights [out_i, in] (any `quant.Weight` but a StackedWeight): rows in turn

    @property
    def shape(self) -> tuple[int, int]:
        return sum(p.shape[0] for p in self.parts), self.parts[0].shape[1]

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.parts)


def join_rows(parts: list) -> np.ndarray | BlockWeight | StackedWeight:
    """One matrix of parts' rows in order (see the module's doc): float32 arrays concatenated,
    block weights of one type joined, a `StackedWeight` of the runs that cannot be."""
    runs: list[list] = []
    for part in parts:
        if runs and joinable(runs[-1], part):
            runs[-1].append(part)
        else:
            runs.append([part])
    joined = [join_run(run) for run in runs]
    return joined[0] if len(joined) == 1 else StackedWeight(joined)


def joinable(run: list, part) -> bool:
    """Whether `part` joins the rows of `run` into one stored matrix, exactly."""
    last = run[-1]
    if isinstance(last, np.ndarray):
        return isinstance(part, np.ndarray)
    return (isinstance(part, BlockWeight) and part.type_name == last.type_name
            and last.shape[0] % PANEL == 0)  # no padding rows between the members


def join_run(run: list) -> np.ndarray | BlockWeight:
    if isinstance(run[0], np.ndarray):
        return np.concatenate(run) if len(run) > 1 else np.ascontiguousarray(run[0])
    if len(run) == 1:
        return run[0]
    shape = (sum(w.shape[0] for w in run), run[0].shape[1])
    packed = empty_packed(sum(w.packed.shape[0] for w in run), run[0].packed.shape[1],
                          run[0].layout)
    np.concatenate([w.packed for w in run], out=packed)
    return BlockWeight(packed, run[0].type_name, shape)
