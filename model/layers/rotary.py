"""Rotary position embeddings (RoPE), the way transformers' Llama applies them.

GPT-2 adds a learned vector per position to the input; Llama instead turns each query and key
as it enters attention: the head's dimensions are paired (d, d + D/2), transformers'
`rotate_half` layout, and pair i is rotated by the angle position * inv_freq[i]. A query-key dot
product then depends only on how far apart the two positions are.

`inv_frequencies` computes the frequencies, with the `rope_scaling` types checkpoints use
(`linear`: all divided by a factor; `llama3`: long wavelengths divided, short ones kept, a
smooth blend between; `freq_factors`: each divided by its own factor, Llama 3's scaling as a
GGUF stores it); `cos_sin` the angles' cosines and sines for a step's positions, in
float32 as transformers computes them. Both plain numpy, shared by the reference
(`llama_reference.rotate`) and the engine, whose kernel `rotate_` turns queries and keys in
place, on numba's threads when a step has enough of them (`parallel.on_threads`).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from nanovllm.model.kernels.parallel import on_threads
from nanovllm.model.kernels.shared import KERNEL_MATH


def inv_frequencies(head_dim: int, theta: float, scaling: dict | None) -> np.ndarray:
    """[head_dim / 2] float32: the rotation speed of each pair of dimensions."""
    exponents = np.arange(0, head_dim, 2).astype(np.float32) / np.float32(head_dim)
    inv_freq = (np.float32(1.0) / np.float32(theta) ** exponents).astype(np.float32)
    kind = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if kind == "linear":
        return inv_freq / np.float32(scaling["factor"])
    if kind == "llama3":
        return llama3_frequencies(inv_freq, scaling)
    if kind == "freq_factors":  # llama.cpp's form of Llama 3's: each frequency's divisor, stored
        return (inv_freq / np.asarray(scaling["factors"], np.float32)).astype(np.float32)
    return inv_freq


def llama3_frequencies(inv_freq: np.ndarray, s: dict) -> np.ndarray:
    """Llama 3.1's scaling: wavelengths longer than the original context / low_freq_factor are
    stretched by `factor`, shorter than context / high_freq_factor kept, blended in between."""
    factor, low, high = (np.float32(s[k]) for k in ("factor", "low_freq_factor",
                                                     "high_freq_factor"))
    context = np.float32(s["original_max_position_embeddings"])
    wavelen = np.float32(2 * math.pi) / inv_freq
    scaled = np.where(wavelen > context / low, inv_freq / factor, inv_freq)
    smooth = (context / wavelen - low) / (high - low)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < context / high) & ~(wavelen > context / low)
    return np.where(medium, blended, scaled).astype(np.float32)


def cos_sin(inv_freq: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rotation of each position: cos and sin, [n, head_dim / 2] float32 each."""
    angles = positions.astype(np.float32)[:, None] * inv_freq[None, :]  # float32, as torch
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


@njit(fastmath=KERNEL_MATH, cache=True, nogil=True, parallel=True)
def rotate_(x, cos, sin):
    """Rotary positions IN PLACE (`llama_reference.rotate`): x ([n, heads, D], any strides)
    turned by each row's angles (cos, sin: [n, D/2], `cos_sin`): each pair
    (x[.., i], x[.., i + D/2]) = (a, b) becomes (a cos - b sin, b cos + a sin)."""
    if on_threads(x.size):
        for t in prange(x.shape[0]):
            rotate_row_(x[t], cos[t], sin[t])
    else:
        for t in range(x.shape[0]):
            rotate_row_(x[t], cos[t], sin[t])
    return x


@njit(fastmath=KERNEL_MATH, cache=True, nogil=True)
def rotate_row_(x, cos, sin):
    half = x.shape[1] // 2
    for h in range(x.shape[0]):
        for i in range(half):
            a, b = x[h, i], x[h, i + half]
            x[h, i] = a * cos[i] - b * sin[i]
            x[h, i + half] = b * cos[i] + a * sin[i]


def compile_rotary() -> None:
    """On a C-contiguous array and on a strided view (a slice of the fused projection)."""
    cos = np.ones((1, 1), np.float32)
    rotate_(np.zeros((1, 1, 2), np.float32), cos, cos)
    rotate_(np.zeros((1, 4), np.float32)[:, :2].reshape(1, 1, 2), cos, cos)
