"""Every compiled kernel against its plain-numpy function in `model/architectures/gpt2_reference.py`
(llm.c's rule), on random inputs and edge shapes: one row, odd sizes, long rows and contexts.

Tolerances. The kernel and the reference do the same float32 math in different orders. For a
float32 sum of n terms we allow Higham and Mary's probabilistic error bound, lam * sqrt(n) * u *
sum|terms| (u = 2**-24, float32's unit roundoff; lam = 8, so that no random input of these tests
comes near it), once for each side, plus a few u per elementwise operation. The worst-case bound
n * u * sum|terms| would hide a dropped term of a long dot product; this one does not. exp32 and
the float16 conversions are checked against numpy on their own (test_exp32.py, test_half.py).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from numba import config

from nanovllm.model.architectures import gpt2_reference as ref
from nanovllm.model.kernels.int8_gemm import Int8Rows, quantize_activations
from nanovllm.model.kernels.parallel import PARALLEL_MIN_WORK
from nanovllm.model.kernels.shared import NO_BIAS, as_kernel_array, row_max, softmax_
from nanovllm.model.layers import linear as linear_module
from nanovllm.model.layers.activations import gelu
from nanovllm.model.layers.attention import CAUSAL_BLOCK, causal_attention, paged_decode_attention
from nanovllm.model.layers.linear import KERNEL_MAX_ROWS, linear
from nanovllm.model.layers.norms import layer_norm
from nanovllm.model.weights.quant import Int8Weight, pack_float32

U = 2.0 ** -24
LAM = 8.0


def sum_error(n: int) -> float:
    """Two float32 sums of n terms (kernel and reference) may differ by this times sum|terms|."""
    return 2 * LAM * math.sqrt(n) * U


def f32(*shape, seed=0, scale=1.0) -> np.ndarray:
    return scale * np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


def assert_within(kernel: np.ndarray, expected: np.ndarray, bound: np.ndarray) -> None:
    assert kernel.dtype == np.float32 and kernel.shape == expected.shape
    excess = np.abs(kernel.astype(np.float64) - expected) - bound
    assert excess.max() <= 0, f"off by up to {excess.max():.3g} beyond the bound"


@pytest.mark.parametrize("rows, in_dim, out_dim", [
    (1, 1, 1), (1, 3072, 769), (3, 768, 2305), (KERNEL_MAX_ROWS, 767, 33),
    (KERNEL_MAX_ROWS + 1, 768, 31),  # (BLAS, like the reference)
])
def test_linear_matches_reference(rows, in_dim, out_dim):
    x, w, b = f32(rows, in_dim, seed=1), f32(out_dim, in_dim, seed=2), f32(out_dim, seed=3)
    expected = ref.linear(x, w, b)
    magnitude = np.abs(x).astype(np.float64) @ np.abs(w).T.astype(np.float64) + np.abs(b)
    assert_within(linear(x, w, b), expected, sum_error(in_dim + 1) * magnitude)


@pytest.mark.parametrize("kernel", ["matmul_nt", "matmul_packed"])
@pytest.mark.parametrize("rows, in_dim, out_dim", [
    (1, 1, 1), (16, 768, 2305), (17, 5, 13), (KERNEL_MAX_ROWS, 767, 33), (50, 1536, 577),
])
def test_linear_kernels_match_reference(kernel, rows, in_dim, out_dim):
    """The small-batch kernels, whichever `linear` takes on this CPU (`matmul_packed` on the
    weights packed as the AVX-512 path's loaders store them)."""
    if kernel != "matmul_nt" and config.DISABLE_JIT:
        pytest.skip("LLVM IR: compiled only")
    x, w = f32(rows, in_dim, seed=1), f32(out_dim, in_dim, seed=2)
    out = np.empty((rows, out_dim), np.float32)
    weights = pack_float32(w) if kernel == "matmul_packed" else w
    store = (NO_BIAS, False) if kernel == "matmul_packed" else ()  # no bias, no residual
    getattr(linear_module, kernel)(x, weights, out, *store)
    magnitude = np.abs(x).astype(np.float64) @ np.abs(w).T.astype(np.float64)
    assert_within(out, ref.linear(x, w, None), sum_error(in_dim) * magnitude)


@pytest.mark.parametrize("rows, e", [(1, 1), (1, 768), (5, 7), (130, 1601)])
def test_layer_norm_matches_reference(rows, e):
    """Rows with a large mean next to a small spread, where a one-pass variance would cancel."""
    x = 30 + f32(rows, e, seed=4, scale=3)
    g, b = 1 + f32(e, seed=5, scale=0.3), f32(e, seed=6, scale=0.1)
    expected = ref.layer_norm(x, g, b, 1e-5)
    x64 = x.astype(np.float64)
    std = np.sqrt(x64.var(-1, keepdims=True) + 1e-5)
    z = (x64 - x64.mean(-1, keepdims=True)) / std
    # the mean's error, seen through 1/std, and the variance's, on z; then times g, plus b
    bound = (sum_error(e) * (np.abs(x64).mean(-1, keepdims=True) / std + np.abs(z))
             + 8 * U * np.abs(z)) * np.abs(g) + 4 * U * (np.abs(z * g) + np.abs(b))
    assert_within(layer_norm(x, g, b, 1e-5), expected, bound)
    read_only = g.copy()
    read_only.flags.writeable = False  # memory-mapped weights: the kernel's other signature
    np.testing.assert_array_equal(layer_norm(x, read_only, b, 1e-5), layer_norm(x, g, b, 1e-5))


@pytest.mark.parametrize("shape", [(1, 1), (1, 3072), (7, 13), (65, 3072)])
def test_gelu_matches_reference_and_works_in_place(shape):
    x = f32(*shape, seed=7, scale=4)
    x.flat[:6] = [-1e4, -30.0, -0.0, 1e-30, 30.0, 1e4][:x.size]
    expected = ref.gelu(x)
    x64 = x.astype(np.float64)
    u = math.sqrt(2 / math.pi) * (x64 + 0.044715 * x64 ** 3)
    # The kernel is within 1e-5 of the exact value (test_model_float32.py). The reference's
    # 1 + tanh(u) is off by a few u, and by the rounding of u itself (relative, a few u) times
    # tanh's slope; times 0.5|x|.
    bound = 1e-5 * np.abs(expected) + 0.5 * np.abs(x64) * U * (4 + 6 * np.abs(u) * (1 - np.tanh(u) ** 2))
    out = gelu(x)
    assert out is x  # in place, as its docstring says
    assert_within(out, expected, bound)


@pytest.mark.parametrize("shape", [(1, 1), (1, 50257), (3, 7), (64, 1024)])
def test_softmax_rows_match_reference(shape):
    scores = f32(*shape, seed=8, scale=10)
    if shape[1] > 1:
        scores[:, ::3] = -np.inf  # as masked logits leave them; never a whole row
    expected = ref.softmax(scores)
    # exp: a few u on each side (exp32 is within 2 ulps); the sums; the scaling
    bound = (8 * U + sum_error(shape[1])) * expected
    assert_within(softmax_(scores.copy()), expected, bound)
    assert (softmax_(scores.copy())[np.isinf(scores)] == 0).all()


@pytest.mark.parametrize("n", [1, 7, 8, 9, 64, 517])
def test_row_max_is_numpys(n):
    """softmax's maximum, in eight chains: numpy's, with -inf, inf and equal elements."""
    row = f32(1, n, seed=n, scale=10)[0]
    assert row_max(row) == row.max()
    row[::2] = -np.inf
    assert row_max(row) == row.max()
    row[n // 2] = np.inf
    assert row_max(row) == np.inf
    assert row_max(np.full(n, -3.5, np.float32)) == np.float32(-3.5)


def attention_bound(q: np.ndarray, k: np.ndarray, v: np.ndarray, window: int = 0) -> np.ndarray:
    """How far two float32 computations of causal attention's last rows may differ: q [T, H, D]
    (the last T of a context of c), k, v [c, H, D] -> [T, H, D]; a query sees only the last
    `window` keys if window > 0.

    A score (a dot product over D) off by s changes every probability of its row by at most 2s
    relative; the softmax's exp, sum over c keys and scaling add theirs; then the weighted sum
    of V over c keys. Each relative error is applied to sum_j p_j |v_j|.
    """
    q, k, v, probs = causal_probabilities(q, k, v, window)
    c, d = k.shape[1], q.shape[2]
    score_error = sum_error(d) * (np.abs(q) @ np.abs(k).transpose(0, 2, 1)).max(-1) / math.sqrt(d)
    relative = 2 * score_error + 8 * U + 2 * sum_error(c)  # [H, T]
    return (relative[..., None] * (probs @ np.abs(v))).transpose(1, 0, 2)


def causal_probabilities(q: np.ndarray, k: np.ndarray, v: np.ndarray, window: int = 0):
    """q, k, v in float64 as [H, ., D], and causal attention's probabilities [H, T, c] (the
    bounds' common ground)."""
    q, k, v = (a.astype(np.float64).transpose(1, 0, 2) for a in (q, k, v))  # [H, ., D]
    t, c, d = q.shape[1], k.shape[1], q.shape[2]
    scores = q @ k.transpose(0, 2, 1) / math.sqrt(d)  # [H, T, c]
    scores += np.triu(np.full((t, c), -np.inf), k=c - t + 1)
    if window:
        scores += np.tril(np.full((t, c), -np.inf), k=c - t - window)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    return q, k, v, probs / probs.sum(-1, keepdims=True)


@pytest.mark.parametrize("n, c", [(1, 1), (1, 300), (5, 5), (CAUSAL_BLOCK + 1, CAUSAL_BLOCK + 1),
                                  (300, 300), (200, 777)])  # (c > n: a chunk of a longer prompt)
def test_causal_attention_matches_reference(n, c):
    """The engine's blocked causal attention over the last n positions of a c-token context."""
    q, k, v = (f32(c, 3, 16, seed=s) for s in (9, 10, 11))
    expected = ref.attention(q, k, v)[c - n:]
    assert_within(causal_attention(q[c - n:], k, v), expected, attention_bound(q[c - n:], k, v))


def shuffled_block_tables(lens: list[int], block_size: int) -> tuple[int, np.ndarray]:
    """(blocks in the pool, one table per sequence): every sequence's blocks drawn from a
    shuffled pool, so that no table is contiguous by luck."""
    rng = np.random.default_rng(len(lens))
    blocks = [-(-n // block_size) for n in lens]
    free = list(rng.permutation(sum(blocks)))
    tables = np.zeros((len(lens), max(blocks)), np.int64)
    for i, count in enumerate(blocks):
        tables[i, :count] = [free.pop() for _ in range(count)]
    return sum(blocks), tables


# 64 contexts of 1-200 tokens: enough work for the parallel loop (PARALLEL_MIN_WORK), the
# others run on the calling thread.
MANY_CONTEXTS = [(37 * i) % 200 + 1 for i in range(64)]


@pytest.mark.parametrize("cache_dtype", [np.float32, np.float16])
@pytest.mark.parametrize("lens", [[1], [1000], [17, 1, 300, 64], MANY_CONTEXTS])
def test_paged_decode_attention_matches_reference(lens, cache_dtype):
    """Each decode is the last row of the reference's attention over its whole context, read
    through a shuffled block table; float16 caches are read exactly as numpy widens them."""
    block_size, n_head, head_dim = 16, 3, 8
    assert (sum(lens) * n_head * head_dim >= PARALLEL_MIN_WORK) == (lens is MANY_CONTEXTS)
    num_blocks, tables = shuffled_block_tables(lens, block_size)
    k_cache, v_cache = (f32(num_blocks * block_size, n_head, head_dim, seed=s, scale=2)
                        .astype(cache_dtype) for s in (12, 13))
    queries = [f32(n, n_head, head_dim, seed=20 + i) for i, n in enumerate(lens)]
    out = np.full((len(lens), n_head, head_dim), np.nan, np.float32)
    paged_decode_attention(np.stack([q[-1] for q in queries]), as_kernel_array(k_cache),
                           as_kernel_array(v_cache), tables, np.array(lens), block_size, out)
    for i, (n, q) in enumerate(zip(lens, queries)):
        pos = np.arange(n)
        slots = tables[i, pos // block_size] * block_size + pos % block_size
        k, v = k_cache[slots].astype(np.float32), v_cache[slots].astype(np.float32)
        expected = ref.attention(q, k, v)[-1:]
        assert_within(out[i:i + 1], expected, attention_bound(q[-1:], k, v))


# On the calling thread, and (rows * e >= PARALLEL_MIN_WORK) on numba's threads.
@pytest.mark.parametrize("rows, e", [(1, 768), (5, 7), (PARALLEL_MIN_WORK // 3072 + 1, 3072),
                                     (40, 6)])
def test_layer_norm_and_gelu_quantize_as_int8_linear_would(rows, e):
    """Fed to an int8 layer, layer norm and GELU quantize each row as they make it: the very
    bits of `int8_gemm.quantize_rows` on their float32 output (serial and on threads; the
    padding of a width that is not a multiple of GROUP stays zero)."""
    int8 = Int8Weight.from_rows(np.ones((1, e), np.int8), np.ones(1, np.float32))
    x = 30 + f32(rows, e, seed=4, scale=3)
    g, b = 1 + f32(e, seed=5, scale=0.3), f32(e, seed=6, scale=0.1)
    h = f32(rows, e, seed=7, scale=4)
    h[0, :2] = [0.0, -1e4]
    for got, float_rows in ((layer_norm(x, g, b, 1e-5, feeds=int8), layer_norm(x, g, b, 1e-5)),
                            (gelu(h.copy(), feeds=int8), gelu(h.copy()))):
        expected = quantize_activations(float_rows)
        assert isinstance(got, Int8Rows) and got.shape == (rows, e)
        np.testing.assert_array_equal(got.q, expected.q)
        np.testing.assert_array_equal(got.scale, expected.scale)
    assert layer_norm(x, g, b, 1e-5, feeds=np.ones((1, e), np.float32)).dtype == np.float32
    in_place = h.copy()
    gelu(in_place, feeds=int8)
    np.testing.assert_array_equal(in_place, gelu(h.copy()))  # still GELU in place


@pytest.mark.parametrize("shape", [(PARALLEL_MIN_WORK // 768 + 3, 768), (9, 768)])
def test_row_kernels_give_the_same_bits_on_threads_as_row_by_row(shape):
    """Enough rows run on numba's threads, one row on the calling thread (`on_threads`): each
    row's arithmetic is the same. Layer norm, GELU, softmax and quantizing, as GPT-2 runs them."""
    x = 30 + f32(*shape, seed=8, scale=3)
    g, b = 1 + f32(shape[1], seed=5, scale=0.3), f32(shape[1], seed=6, scale=0.1)
    int8 = Int8Weight.from_rows(np.ones((1, shape[1]), np.int8), np.ones(1, np.float32))
    rows = [slice(i, i + 1) for i in (0, 1, shape[0] // 2, shape[0] - 1)]
    for kernel in (lambda a: layer_norm(a, g, b, 1e-5), lambda a: gelu(a.copy()),
                   lambda a: softmax_(a.copy()), lambda a: quantize_activations(a).q,
                   lambda a: layer_norm(a, g, b, 1e-5, feeds=int8).q,
                   lambda a: gelu(a.copy(), feeds=int8).q):
        whole = kernel(x)
        for r in rows:
            np.testing.assert_array_equal(whole[r], kernel(x[r]))
