"""The Llama family's forward pass as the engine runs it: Llama 2/3, SmolLM2, TinyLlama, Mistral
and Qwen2, one model whose config says which (`model/llama_config.py`).

`model/reference_llama.py` is the same model as a few pure functions, the one to read first;
this module computes the same numbers with the engine's kernels, shared with GPT-2
(`linear`, the paged attention of `model/attention.py`), plus the three this family adds, each
tested against its reference: `rms_norm` (and `add_rms_norm_`, the residual add fused into it),
`silu_mul` (SwiGLU) and `rotate_`.

Hugging Face stores Llama's linear layers as nn.Linear, already `[out, in]`. The loader fuses
q/k/v into one matrix (rows Q | K | V, K and V with `num_key_value_heads` heads each) and
gate/up into another, so a step makes one matmul of each. The LM head is the embedding itself
when the config ties them (SmolLM2, Llama 3.2, Qwen2.5), `lm_head.weight` otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from nanovllm.model.attention import (
    AttentionBatch,
    causal_attention,
    compile_attention_kernel,
    paged_attention,
)
from nanovllm.model.kernels import KERNEL_MATH, exp32
from nanovllm.model.linear import compile_linear_kernel, linear
from nanovllm.model.llama_config import LlamaConfig
from nanovllm.model.quant import Weight, gather_rows
from nanovllm.model.rotary import cos_sin, inv_frequencies


@dataclass(slots=True)
class LayerWeights:
    input_norm: np.ndarray        # [E] RMSNorm gain before attention
    qkv_w: Weight                 # [(H + 2 Hkv) D, E]: rows Q | K | V
    qkv_b: np.ndarray | None      # Qwen2's q/k/v biases
    o_w: Weight                   # [E, H D]
    o_b: np.ndarray | None        # Llama with attention_bias only
    post_norm: np.ndarray         # [E] RMSNorm gain before the MLP
    gate_up_w: Weight             # [2 I, E]: rows gate | up
    down_w: Weight                # [E, I]


@dataclass(slots=True)
class LlamaWeights:
    embed: Weight                 # [V, E]
    layers: list[LayerWeights]
    norm: np.ndarray              # [E] final RMSNorm gain
    lm_head: Weight               # [V, E]: `embed` itself when tied


def compile_kernels() -> None:
    """Compiles this family's kernels now (or loads them from numba's disk cache), for the
    argument types the forward pass gives them."""
    compile_attention_kernel()
    compile_linear_kernel()
    x = np.zeros((1, 2), np.float32)
    read_only = np.zeros(2, np.float32)
    read_only.flags.writeable = False
    for g in (x[0], read_only):
        rms_norm(x, g, 1e-5)
        add_rms_norm_(x, x.copy(), g, 1e-5)
    silu_mul(x)
    cos = np.ones((1, 1), np.float32)
    rotate_(x.reshape(1, 1, 2), cos, cos)
    rotate_(np.zeros((1, 4), np.float32)[:, :2].reshape(1, 1, 2), cos, cos)  # a strided view


# Starting and joining a parallel region costs more than normalizing, gating or rotating a
# decode step's rows (even at batch 64), and under load it waits for a thread the OS has parked.
# Below this many output elements those kernels run on the calling thread; a long prefill's rows
# are shared out.
PARALLEL_MIN_ELEMENTS = 1 << 17


@njit(fastmath=KERNEL_MATH, cache=True, nogil=True, parallel=True)
def rms_norm(x, g, eps):
    """Each row of x ([n, E], C-contiguous) divided by its root mean square, times g: a new
    array (`reference_llama.rms_norm`). Layer norm without the mean and the shift."""
    out = np.empty_like(x)
    if x.size < PARALLEL_MIN_ELEMENTS:
        for i in range(x.shape[0]):
            rms_norm_row(x[i], g, eps, out[i])
    else:
        for i in prange(x.shape[0]):
            rms_norm_row(x[i], g, eps, out[i])
    return out


@njit(fastmath=KERNEL_MATH, cache=True, nogil=True, parallel=True)
def add_rms_norm_(x, delta, g, eps):
    """x += delta IN PLACE (the residual stream, both [n, E] C-contiguous), and returns the new
    x's rms_norm: one pass over the rows instead of numpy's add and then the norm's (vLLM's
    fused_add_rms_norm)."""
    out = np.empty_like(x)
    if x.size < PARALLEL_MIN_ELEMENTS:
        for i in range(x.shape[0]):
            add_row_(x[i], delta[i])
            rms_norm_row(x[i], g, eps, out[i])
    else:
        for i in prange(x.shape[0]):
            add_row_(x[i], delta[i])
            rms_norm_row(x[i], g, eps, out[i])
    return out


@njit(fastmath=KERNEL_MATH, cache=True, nogil=True)
def add_row_(x, delta):
    for j in range(x.shape[0]):
        x[j] += delta[j]


@njit(fastmath=KERNEL_MATH, cache=True, nogil=True)
def rms_norm_row(x, g, eps, out):
    sq = np.float32(0.0)
    for j in range(x.shape[0]):
        sq += x[j] * x[j]
    inv_rms = np.float32(1.0 / np.sqrt(sq / x.shape[0] + eps))
    for j in range(x.shape[0]):
        out[j] = g[j] * (x[j] * inv_rms)


@njit(fastmath=KERNEL_MATH, cache=True, nogil=True, parallel=True)
def silu_mul(h):
    """SwiGLU's gate: h ([n, 2I], rows gate | up) -> silu(gate) * up, [n, I], a new array
    (`reference_llama.swiglu`); silu(g) = g / (1 + e**-g)."""
    out = np.empty((h.shape[0], h.shape[1] // 2), np.float32)
    if out.size < PARALLEL_MIN_ELEMENTS:
        for i in range(h.shape[0]):
            silu_mul_row(h[i], out[i])
    else:
        for i in prange(h.shape[0]):
            silu_mul_row(h[i], out[i])
    return out


# error_model="numpy": with Python's, every division checks its divisor for zero and may raise,
# and that branch kept the loop from vectorizing (1 + e**-g is never 0 anyway).
@njit(fastmath=KERNEL_MATH, cache=True, nogil=True, error_model="numpy")
def silu_mul_row(h, out):
    half = out.shape[0]
    for j in range(half):
        g = h[j]
        out[j] = g / (np.float32(1.0) + exp32(-g)) * h[half + j]


@njit(fastmath=KERNEL_MATH, cache=True, nogil=True, parallel=True)
def rotate_(x, cos, sin):
    """Rotary positions IN PLACE (`reference_llama.rotate`): x ([n, heads, D], any strides)
    turned by each row's angles (cos, sin: [n, D/2], `rotary.cos_sin`): each pair
    (x[.., i], x[.., i + D/2]) = (a, b) becomes (a cos - b sin, b cos + a sin)."""
    if x.size < PARALLEL_MIN_ELEMENTS:
        for t in range(x.shape[0]):
            rotate_row_(x[t], cos[t], sin[t])
    else:
        for t in prange(x.shape[0]):
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


def mlp(x: np.ndarray, layer: LayerWeights) -> np.ndarray:
    """x [n, E] -> [n, E]: gate and up in one matmul, silu(gate) * up, down."""
    return linear(silu_mul(linear(x, layer.gate_up_w)), layer.down_w)


def self_attention(x: np.ndarray, layer: LayerWeights, cfg: LlamaConfig, cos: np.ndarray,
                   sin: np.ndarray, kv_cache: tuple[np.ndarray, np.ndarray] | None,
                   batch: AttentionBatch | None) -> np.ndarray:
    """x [n, E] -> [n, E]. Queries and keys are rotated by their positions before they meet;
    with a `kv_cache`, the rotated keys (and the values) are what the cache keeps."""
    n = x.shape[0]
    h, kv, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    qkv = linear(x, layer.qkv_w, layer.qkv_b)
    # Column slices of the fused projection, viewed as [tokens, heads, head_dim]: no copies.
    q = qkv[:, :h * d].reshape(n, h, d)
    k = qkv[:, h * d:(h + kv) * d].reshape(n, kv, d)
    v = qkv[:, (h + kv) * d:].reshape(n, kv, d)
    # Queries and keys are adjacent columns: one kernel call turns both, heads [0, h + kv).
    rotate_(qkv[:, :(h + kv) * d].reshape(n, h + kv, d), cos, sin)
    if kv_cache is None:
        heads = causal_attention(q, k, v, cfg.sliding_window)
    else:
        heads = paged_attention(q, k, v, kv_cache, batch, cfg.sliding_window)
    return linear(heads.reshape(n, h * d), layer.o_w, layer.o_b)


def forward(w: LlamaWeights, cfg: LlamaConfig, token_ids: np.ndarray, positions: np.ndarray,
            kv_caches: list[tuple[np.ndarray, np.ndarray]] | None = None,
            batch: AttentionBatch | None = None,
            logit_rows: np.ndarray | slice | None = None) -> np.ndarray:
    """Logits for `token_ids` at `positions`: GPT-2's `forward` contract (`model/gpt2.py`),
    and `reference_llama.forward` for one whole sequence."""
    eps = cfg.rms_norm_eps
    cos, sin = cos_sin(inv_frequencies(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling),
                       positions)
    x = gather_rows(w.embed, token_ids)
    h = rms_norm(x, w.layers[0].input_norm, eps)
    for i, layer in enumerate(w.layers):
        cache = kv_caches[i] if kv_caches is not None else None
        # Each residual add is fused with the norm that reads its result next.
        h = add_rms_norm_(x, self_attention(h, layer, cfg, cos, sin, cache, batch),
                          layer.post_norm, eps)
        if i + 1 < len(w.layers):
            h = add_rms_norm_(x, mlp(h, layer), w.layers[i + 1].input_norm, eps)
        else:  # (the final norm reads only the rows whose logits are wanted)
            x += mlp(h, layer)
    if logit_rows is not None:
        x = x[logit_rows]
    return linear(rms_norm(np.ascontiguousarray(x), w.norm, eps), w.lm_head)
