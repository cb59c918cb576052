"""LoRA's update as plain numpy: y = x W.T + scale * (x A.T) B.T, per row by its adapter.

A LoRA fine-tune keeps the base matrix W [out, in] and learns two thin ones, A [r, in] and
B [out, r], r much smaller than in and out. Multiplying x by A, then by B, costs r (in + out) per
row instead of the in * out of forming W + scale B A: so one base product serves every row of a
batch, and each row adds its own adapter's two thin products (S-LoRA's and Punica's batching).

Beside a bfloat16 base, A and B are kept in bfloat16 too (`BF16Weight`: half the memory), and
widened to float32 for their products: being thin, they cost little to widen, and numpy's
products on them run faster than the bfloat16 kernels, made for the base's wide matrices.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nanovllm.model.weights.quant import BF16Weight, dequantize


@dataclass(slots=True)
class LoRAPair:
    """One adapted projection: out[:, cols] += (x @ a.T) @ b.T, b already scaled."""
    a: np.ndarray | BF16Weight   # float32 or bfloat16 [r, in]
    b: np.ndarray | BF16Weight   # [out_member, r]: PEFT's lora_B times its scale
    cols: slice     # the member's columns of the fused output (q, k or v of q|k|v, ...)


def lora_delta(x: np.ndarray, a: np.ndarray, b: np.ndarray, scale: float) -> np.ndarray:
    """x [n, in], a [r, in], b [out, r] -> scale * (x a.T) b.T [n, out]: PEFT's forward."""
    return scale * ((x @ a.T) @ b.T)


def add_row_updates(x: np.ndarray, out: np.ndarray,
                    groups: list[tuple[np.ndarray, LoRAPair]]) -> None:
    """out [n, out_total] += each group's update on its rows: (x[rows] a.T) b.T in its columns.

    `groups` pairs the row indices of one adapter (ascending) with that adapter's pair; rows in
    no group are left as they are (they pay nothing)."""
    for rows, pair in groups:
        xa = times_t(x[rows], pair.a)                   # [m, r]
        out[rows, pair.cols] += times_t(xa, pair.b)     # [m, out_member]


def times_t(x: np.ndarray, w: np.ndarray | BF16Weight) -> np.ndarray:
    """x [m, k] @ w.T [k, n], w float32 or bfloat16 (widened: the float32 values it holds)."""
    return x @ dequantize(w).T
