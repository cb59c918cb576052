"""GPT-2's forward pass as the engine runs it: float32 numpy, compiled kernels, a paged KV cache.

`model/reference.py` is the same model as a few pure functions, the one to read first; this
module computes the same numbers faster, and its kernels are tested against that one. For speed
it writes in place where no one else holds the array: `gelu` overwrites its input, `embed` adds
the positions into its fresh gather, `forward` adds each block's output to the residual stream,
and with a KV cache `self_attention` writes every new token's keys and values into it (see
`paged_attention`). Everything else returns a new array and leaves its arguments alone.

Weight matrices are stored `[out, in]` (a linear layer is `linear(x, w, b)` = `x @ w.T + b`, see
`model/linear.py`); the loader transposes Hugging Face's Conv1D `[in, out]` once. The LM head is
the token embedding itself, `[vocab, n_embd]`, already in that layout. Every activation stays
float32: Python float constants are "weak" scalars in NumPy 2, so they never promote an array to
float64. The matrices (and the embedding) may be stored as int8 or bfloat16 (`model/quant.py`);
`linear` and `gather_rows` widen them as they read them.

Attention reads keys and values either straight from the current tokens (a plain full-sequence
pass) or from a paged KV cache described by an `AttentionBatch` (see `model/attention.py`).
Layer norm and GELU, like the small-batch linear layers and decode attention, are short numba
loops compiled at engine start (`compile_kernels`); the rest is numpy. Told which weight their
output feeds (`feeds=`), they hand an int8 layer its input already quantized, row by row as they
make it (`int8_gemm.Int8Rows`), where a separate pass would read the float32 rows back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from nanovllm.model.attention import (
    AttentionBatch,
    causal_attention,
    compile_attention_kernel,
    paged_attention,
)
from nanovllm.model.config import GPT2Config
from nanovllm.model.int8_gemm import Int8Rows, quantize_vector
from nanovllm.model.kernels import KERNEL_MATH, exp32_within
from nanovllm.model.linear import compile_linear_kernel, linear, takes_int8
from nanovllm.model.quant import Int8Weight, Weight, gather_rows


@dataclass(slots=True)
class BlockWeights:
    ln_1_g: np.ndarray
    ln_1_b: np.ndarray
    attn_w: Weight           # c_attn: [3E, E], rows are Q | K | V
    attn_b: np.ndarray
    attn_proj_w: Weight      # [E, E]
    attn_proj_b: np.ndarray
    ln_2_g: np.ndarray
    ln_2_b: np.ndarray
    fc_w: Weight             # [4E, E]
    fc_b: np.ndarray
    fc_proj_w: Weight        # [E, 4E]
    fc_proj_b: np.ndarray


@dataclass(slots=True)
class GPT2Weights:
    wte: Weight              # [V, E] token embedding, tied to the LM head
    wpe: np.ndarray          # [P, E]
    blocks: list[BlockWeights]
    ln_f_g: np.ndarray
    ln_f_b: np.ndarray


def compile_kernels() -> None:
    """Compiles the model's numba kernels now (or loads them from numba's cache on disk), so
    that the first request does not wait a second or two for them."""
    compile_attention_kernel()
    compile_linear_kernel()
    compile_layer_norm()
    int8 = Int8Weight.from_rows(np.zeros((1, 1), np.int8), np.zeros(1, np.float32))
    for rows in (1, SERIAL_MAX_ROWS + 1):
        for feeds in (None, int8):
            gelu(np.zeros((rows, 1), np.float32), feeds)


# Up to this many rows (a small decode step's: beams, a few requests), layer norm and GELU run
# on the calling thread: their work is microseconds, less than a parallel region's start, which
# on a busy machine waits for a descheduled thread. Larger batches share them out.
SERIAL_MAX_ROWS = 32


def layer_norm(x: np.ndarray, g: np.ndarray, b: np.ndarray, eps: float,
               feeds: Weight | None = None) -> np.ndarray | Int8Rows:
    """Each row of x ([n, E], C-contiguous) to zero mean and unit variance, then times g plus b;
    a new array (`reference.layer_norm`). A compiled loop over rows, on numba's threads above
    `SERIAL_MAX_ROWS` rows: three passes over x, where numpy's version makes six.

    `feeds` is the weight of the linear layer the result goes into: where that layer takes int8
    activations, each row is quantized for it as soon as it is made (`Int8Rows`), and the
    float32 rows are never written out."""
    serial = x.shape[0] <= SERIAL_MAX_ROWS
    if feeds is not None and takes_int8(feeds):
        rows = Int8Rows.empty(*x.shape)
        (layer_norm_int8_ if serial else layer_norm_int8_parallel_)(x, g, b, eps, rows.q,
                                                                    rows.scale)
        return rows
    out = np.empty_like(x)
    (layer_norm_rows_ if serial else layer_norm_parallel_)(x, g, b, eps, out)
    return out


@njit(fastmath=KERNEL_MATH, cache=True, nogil=True)
def layer_norm_rows_(x, g, b, eps, out):
    for i in range(x.shape[0]):
        layer_norm_row_(x[i], g, b, eps, out[i])


@njit(fastmath=KERNEL_MATH, cache=True, nogil=True, parallel=True)
def layer_norm_parallel_(x, g, b, eps, out):
    for i in prange(x.shape[0]):
        layer_norm_row_(x[i], g, b, eps, out[i])


@njit(fastmath=KERNEL_MATH, cache=True, nogil=True)
def layer_norm_row_(x, g, b, eps, out):
    n = x.shape[0]
    mean = np.float32(0.0)
    for j in range(n):
        mean += x[j]
    mean /= n
    var = np.float32(0.0)
    for j in range(n):
        var += (x[j] - mean) * (x[j] - mean)
    inv_std = np.float32(1.0 / np.sqrt(var / n + eps))
    for j in range(n):
        out[j] = (x[j] - mean) * inv_std * g[j] + b[j]


# The fused kernels compile without fast-math: `quantize_vector` is inlined into them and must
# round as `quantize_rows` does; the layer norm and GELU rows keep their own flags.
@njit(cache=True, nogil=True)
def layer_norm_int8_(x, g, b, eps, q, scale):
    """q[i], scale[i] = `quantize_rows` of `layer_norm_rows_`'s row i, through one row of
    scratch (in cache)."""
    row = np.empty(x.shape[1], np.float32)
    for i in range(x.shape[0]):
        layer_norm_row_(x[i], g, b, eps, row)
        scale[i] = quantize_vector(row, q[i])


@njit(cache=True, nogil=True, parallel=True)
def layer_norm_int8_parallel_(x, g, b, eps, q, scale):
    for i in prange(x.shape[0]):
        row = np.empty(x.shape[1], np.float32)
        layer_norm_row_(x[i], g, b, eps, row)
        scale[i] = quantize_vector(row, q[i])


def compile_layer_norm() -> None:
    """For writable and for read-only (memory-mapped) g and b: two signatures, serial and
    parallel, float32 and quantized."""
    read_only = np.zeros(1, np.float32)
    read_only.flags.writeable = False
    int8 = Int8Weight.from_rows(np.zeros((1, 1), np.int8), np.zeros(1, np.float32))
    for x in (np.zeros((1, 1), np.float32), np.zeros((SERIAL_MAX_ROWS + 1, 1), np.float32)):
        for v in (x[0], read_only):
            for feeds in (None, int8):
                layer_norm(x, v, v, 1e-5, feeds)


GELU_C = np.float32(math.sqrt(2.0 / math.pi))


def gelu(x: np.ndarray, feeds: Weight | None = None) -> np.ndarray | Int8Rows:
    """GPT-2's tanh approximation (`gelu_new`, `reference.gelu`) IN PLACE: overwrites x ([n, 4E],
    C-contiguous) and returns it. Computed as 0.5 x (1 + tanh(u)) = x / (1 + e**(-2u)), in one
    pass over x, where numpy's version makes nine; on numba's threads above `SERIAL_MAX_ROWS`.
    With `feeds` as in `layer_norm`: also quantizes each row while it is in cache, and returns
    those (`Int8Rows`)."""
    serial = x.shape[0] <= SERIAL_MAX_ROWS
    if feeds is not None and takes_int8(feeds):
        rows = Int8Rows.empty(*x.shape)
        (gelu_int8_ if serial else gelu_int8_parallel_)(x, rows.q, rows.scale)
        return rows
    (gelu_rows_ if serial else gelu_parallel_)(x)
    return x


@njit(cache=True, nogil=True)
def gelu_int8_(x, q, scale):
    """`gelu_rows_`, then each row quantized (`quantize_rows`) while it is in cache."""
    for i in range(x.shape[0]):
        gelu_row_(x[i])
        scale[i] = quantize_vector(x[i], q[i])


@njit(cache=True, nogil=True, parallel=True)
def gelu_int8_parallel_(x, q, scale):
    for i in prange(x.shape[0]):
        gelu_row_(x[i])
        scale[i] = quantize_vector(x[i], q[i])


@njit(fastmath=KERNEL_MATH, error_model="numpy", cache=True, nogil=True)
def gelu_rows_(x):
    for i in range(x.shape[0]):
        gelu_row_(x[i])


@njit(fastmath=KERNEL_MATH, error_model="numpy", cache=True, nogil=True, parallel=True)
def gelu_parallel_(x):
    for i in prange(x.shape[0]):
        gelu_row_(x[i])


# The exponent -2u bounded to where `exp32_within` is exact or infinite: below, 1 + e**(-2u)
# is 1 in float32, so x / (1 + e**(-2u)) is x; at the top it is inf, so the result is +-0.
GELU_EXP_MIN, GELU_EXP_MAX = np.float32(-87.0), np.float32(89.0)


@njit(fastmath=KERNEL_MATH, error_model="numpy", cache=True, nogil=True)
def gelu_row_(row):
    """One vectorized pass: the exponent bounded so that `exp32_within` needs no branch, and
    numpy's error model so that the division has no zero test (1 + e**t >= 1)."""
    for j in range(row.shape[0]):
        v = row[j]
        t = np.float32(-2.0) * GELU_C * (v + np.float32(0.044715) * v * v * v)
        t = min(max(t, GELU_EXP_MIN), GELU_EXP_MAX)
        row[j] = v / (np.float32(1.0) + exp32_within(t))


def mlp(x: np.ndarray, blk: BlockWeights, residual: np.ndarray | None = None) -> np.ndarray:
    """x [n, E] -> [n, E] (`reference.mlp`); GELU overwrites the fresh hidden layer. With
    `residual` [n, E], the output is added into it (in place) and it is returned."""
    h = linear(x, blk.fc_w, blk.fc_b)
    return linear(gelu(h, feeds=blk.fc_proj_w), blk.fc_proj_w, blk.fc_proj_b, residual)


def self_attention(x: np.ndarray, blk: BlockWeights, n_head: int,
                   kv_cache: tuple[np.ndarray, np.ndarray] | None,
                   batch: AttentionBatch | None,
                   residual: np.ndarray | None = None) -> np.ndarray:
    """x [n, E] -> [n, E] (`reference.self_attention`). With a `kv_cache`, first WRITES the new
    tokens' keys and values into their slots of it, then attends as `batch` says. With
    `residual` [n, E], the output is added into it (in place) and it is returned."""
    n, e = x.shape
    qkv = linear(x, blk.attn_w, blk.attn_b)
    # Column slices of the fused projection, viewed as [tokens, heads, head_dim]: no copies.
    q, k, v = (qkv[:, i * e:(i + 1) * e].reshape(n, n_head, e // n_head) for i in range(3))
    if kv_cache is None:
        heads = causal_attention(q, k, v)
    else:
        heads = paged_attention(q, k, v, kv_cache, batch)
    return linear(heads.reshape(n, e), blk.attn_proj_w, blk.attn_proj_b, residual)


def embed(w: GPT2Weights, token_ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Token plus position embeddings: a new array (the positions are added into the gather)."""
    x = gather_rows(w.wte, token_ids)
    x += w.wpe[positions]
    return x


def lm_head(x: np.ndarray, w: GPT2Weights, eps: float) -> np.ndarray:
    return linear(layer_norm(x, w.ln_f_g, w.ln_f_b, eps, feeds=w.wte), w.wte)


def forward(w: GPT2Weights, cfg: GPT2Config, token_ids: np.ndarray, positions: np.ndarray,
            kv_caches: list[tuple[np.ndarray, np.ndarray]] | None = None,
            batch: AttentionBatch | None = None,
            logit_rows: np.ndarray | slice | None = None) -> np.ndarray:
    """Logits for `token_ids` at `positions` (`reference.forward` for one whole sequence).

    Without `kv_caches` the tokens are one sequence attended causally (the plain full pass).
    With them, each token's K/V is written to its cache slot (the caches are updated in place)
    and attention follows `batch`.
    `logit_rows` picks the rows that need logits: the LM head is the largest matmul of a step.
    """
    eps = cfg.layer_norm_epsilon
    x = embed(w, token_ids, positions)
    for i, blk in enumerate(w.blocks):
        cache = kv_caches[i] if kv_caches is not None else None
        # Each sub-layer adds its output into x, the residual stream, in place.
        x = self_attention(layer_norm(x, blk.ln_1_g, blk.ln_1_b, eps, feeds=blk.attn_w), blk,
                           cfg.n_head, cache, batch, residual=x)
        x = mlp(layer_norm(x, blk.ln_2_g, blk.ln_2_b, eps, feeds=blk.fc_w), blk, residual=x)
    if logit_rows is not None:
        x = x[logit_rows]
    return lm_head(x, w, eps)
