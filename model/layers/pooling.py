"""Pooling as pure numpy functions: texts' hidden states to one vector each, vectors to unit
length, a cross-encoder's logits through its activation. Which of them a checkpoint asks for is
`model/checkpoint/pooling_config.py`'s to read."""

from __future__ import annotations

import numpy as np


def pool(hidden: np.ndarray, starts: np.ndarray, modes: tuple[str, ...]) -> np.ndarray:
    """Texts laid end to end in hidden [n, E] (text i is rows [starts[i], starts[i + 1])) to one
    vector each: [texts, E * len(modes)]."""
    parts = []
    for mode in modes:
        if mode == "cls":
            parts.append(hidden[starts[:-1]])
        elif mode == "lasttoken":
            parts.append(hidden[starts[1:] - 1])
        elif mode == "max":
            parts.append(np.maximum.reduceat(hidden, starts[:-1], axis=0))
        else:
            sums = np.add.reduceat(hidden, starts[:-1], axis=0)  # [texts, E]
            lengths = np.diff(starts).astype(np.float32)[:, None]
            parts.append(sums / (lengths if mode == "mean" else np.sqrt(lengths)))
    return np.concatenate(parts, axis=1) if len(parts) > 1 else np.ascontiguousarray(parts[0])


def normalize(x: np.ndarray) -> np.ndarray:
    """Each row to unit length (a zero row stays zero), as torch's F.normalize."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), np.float32(1e-12))


def activate(logits: np.ndarray, activation: str) -> np.ndarray:
    if activation == "sigmoid":
        return 1.0 / (1.0 + np.exp(-logits))
    if activation == "tanh":
        return np.tanh(logits)
    return logits
