"""Bidirectional multi-head attention over a batch of whole texts (an encoder's attention).

A step's texts lie one after another in the flat token batch, text i in rows
[starts[i], starts[i + 1]); each token attends to every token of its own text and to nothing
else, so no mask is built and no padding computed. Texts of equal length that lie next to each
other (a batch of one length, as clients send them) are attended in one batched matmul.
`reference_bert.self_attention` is the one-text version.
"""

from __future__ import annotations

import numpy as np

from nanovllm.model.kernels import softmax_


def encoder_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray,
                      starts: np.ndarray) -> np.ndarray:
    """q, k, v: [n, H, D] (any strides); starts: [texts + 1] row offsets. Returns [n, H, D]."""
    out = np.empty(q.shape, np.float32)
    scale = np.float32(1.0 / np.sqrt(q.shape[-1]))
    for first, last in equal_length_runs(starts):
        a, b = int(starts[first]), int(starts[last])
        r, t = last - first, (b - a) // (last - first)
        # [r, H, t, D]: r texts of t tokens each, copied contiguous (numpy's matmul reaches
        # BLAS only for contiguous matrices; a strided one takes its slow generic loop).
        qs, vs = (np.ascontiguousarray(x[a:b].reshape(r, t, *x.shape[1:]).transpose(0, 2, 1, 3))
                  for x in (q, v))
        kt = np.ascontiguousarray(k[a:b].reshape(r, t, *k.shape[1:]).transpose(0, 2, 3, 1))
        qs *= scale
        scores = softmax_(np.matmul(qs, kt))  # [r, H, t, t]
        out[a:b] = np.matmul(scores, vs).transpose(0, 2, 1, 3).reshape(b - a, *q.shape[1:])
    return out


def equal_length_runs(starts: np.ndarray) -> list[tuple[int, int]]:
    """[first, last) text indices of each run of adjacent texts with the same length."""
    lengths = np.diff(starts)
    runs, first = [], 0
    for i in range(1, len(lengths) + 1):
        if i == len(lengths) or lengths[i] != lengths[first]:
            runs.append((first, i))
            first = i
    return runs
