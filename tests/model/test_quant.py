"""int8 and bfloat16 weights: the conversions against their definitions (and torch), the linear
kernel on such weights against `gpt2_reference.linear` on the float32 matrices they stand for, and
the whole model against the reference model on those matrices."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nanovllm import LLM, EngineConfig, SamplingParams
from nanovllm.model import load_gpt2
from nanovllm.model.architectures import gpt2_reference as ref
from nanovllm.model.architectures.gpt2 import forward
from nanovllm.model.layers import linear as linear_module
from nanovllm.model.layers.attention import BF16_MIN_CONTEXT
from nanovllm.model.layers.linear import KERNEL_MAX_ROWS, host_packs_bfloat16, linear
from nanovllm.model.weights.precision import check_precision
from nanovllm.model.weights.quant import (
    BF16Weight,
    Int8Weight,
    PackedBF16Weight,
    PackedF32Weight,
    bf16_bits_to_float32,
    dequantize,
    dequantize_weights,
    gather_rows,
    pack_bfloat16_weights,
    pack_float32_weights,
    quantize_int8,
    round_to_bfloat16,
    to_bfloat16,
    widen,
)
from tests.model.test_kernels_vs_reference import assert_within, f32, sum_error


def test_int8_rounds_each_element_to_the_nearest_step_of_its_row():
    w = f32(50, 300, seed=1, scale=0.02)
    w[3] = 0.0  # an all-zero row: scale 0, not a division by zero
    w[4, 7] = -1.0  # a row with one large element
    qw = quantize_int8(w)
    assert qw.q.dtype == np.int8 and qw.scale.dtype == np.float32
    assert np.abs(qw.q).max() <= 127 and (np.abs(qw.q).max(axis=1)[[0, 4]] == 127).all()
    np.testing.assert_array_equal(qw.scale, (np.abs(w).max(axis=1) / 127).astype(np.float32))
    error = np.abs(dequantize(qw).astype(np.float64) - w)
    assert (error <= qw.scale[:, None] * (0.5 + 1e-5)).all()
    assert (dequantize(qw)[3] == 0).all()


def test_bfloat16_rounds_like_torch():
    w = f32(1000, seed=2, scale=3) * 10.0 ** np.random.default_rng(3).integers(-30, 30, 1000)
    # ties to even both ways, beyond bfloat16's largest (infinity, as torch), a subnormal
    w[:6] = [0.0, -0.0, 1.0 + 2**-8, 1.0 + 3 * 2**-8, 3.4e38, -1e-40]
    w = w.astype(np.float32)
    theirs = torch.from_numpy(w).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(to_bfloat16(w).bits, theirs)
    normal = w[6:]  # (relative error 2**-8 at most: half of a 7-bit mantissa's step)
    assert (np.abs(dequantize(to_bfloat16(normal)) - normal) <= np.abs(normal) * 2.0 ** -8).all()


def test_widen_plain_python_equals_compiled():
    """What NUMBA_DISABLE_JIT=1 runs (the Python body) gives the compiled kernels' values."""
    bits = np.random.default_rng(4).integers(0, 2**16, 2000).astype(np.uint16)
    bits = bits[np.isfinite(bf16_bits_to_float32.py_func(bits))]
    for b in bits[:300]:
        assert widen(b) == bf16_bits_to_float32(b) == np.float32((np.uint32(b) << 16).view(np.float32))
    for q in np.arange(-127, 128, dtype=np.int8):
        assert widen(q) == np.float32(q)


def quantized(kind: str, w: np.ndarray):
    return quantize_int8(w) if kind == "int8" else to_bfloat16(w)


@pytest.mark.parametrize("kind", ["int8", "bfloat16"])
@pytest.mark.parametrize("rows, in_dim, out_dim", [
    (1, 1, 1), (1, 768, 2305), (5, 767, 33), (KERNEL_MAX_ROWS, 64, 1030),
    (KERNEL_MAX_ROWS + 1, 768, 31), (200, 65, 300),  # (BLAS on widened weights)
])
def test_linear_on_narrow_weights_matches_reference_on_their_float32(kind, rows, in_dim, out_dim):
    """int8 is W8A8: the reference multiplies the activations as quantized per row too."""
    x, b = f32(rows, in_dim, seed=5), f32(out_dim, seed=6)
    w = quantized(kind, f32(out_dim, in_dim, seed=7, scale=0.02))
    if kind == "int8":
        x = dequantize(quantize_int8(x))
    plain = dequantize(w)
    expected = ref.linear(x, plain, b)
    magnitude = np.abs(x).astype(np.float64) @ np.abs(plain).T.astype(np.float64) + np.abs(b)
    # int8: the exact integer sum is rounded to float32 and scaled twice, three more roundings
    assert_within(linear(x, w, b), expected, (sum_error(in_dim + 1) + 6 * 2.0**-24) * magnitude)


@pytest.mark.parametrize("kind", ["bfloat16"])
def test_blas_path_widens_in_chunks(monkeypatch, kind):
    """A matrix taller than BLAS_CHUNK (the LM head) is widened a chunk at a time."""
    monkeypatch.setattr(linear_module, "BLAS_CHUNK", 7)
    x, w = f32(KERNEL_MAX_ROWS + 3, 40, seed=8), quantized(kind, f32(30, 40, seed=9))
    plain = dequantize(w)
    magnitude = np.abs(x).astype(np.float64) @ np.abs(plain).T.astype(np.float64)
    assert_within(linear(x, w), ref.linear(x, plain), (sum_error(41) + 4 * 2.0**-24) * magnitude)


@pytest.mark.parametrize("kind", ["int8", "bfloat16"])
def test_embedding_rows_are_the_float32_rows(kind):
    table = quantized(kind, f32(100, 16, seed=10))
    ids = np.array([5, 0, 99, 5])
    np.testing.assert_array_equal(gather_rows(table, ids), dequantize(table)[ids])


@pytest.mark.parametrize("options, packed", [(dict(quantization="int8"), False),
                                             (dict(dtype="bfloat16"), False),
                                             (dict(dtype="bfloat16"), True)],
                         ids=["int8", "bfloat16", "bfloat16-avx512bf16"])
def test_model_on_narrow_weights_is_the_reference_model_on_their_float32(perturbed_ckpt, options,
                                                                        packed, monkeypatch):
    """Kernels and reference agree on the converted model to float32 rounding (the perturbed
    model: random biases and layer norms, logits of real GPT-2's size). int8 is W8A8: the
    reference's linear layers quantize their input rows first, as the kernels do; so does
    bfloat16 packed for the avx512bf16 kernel, rounding them to bfloat16, and the inputs of
    attention's two products too over BF16_MIN_CONTEXT keys or more
    (`model/kernels/bf16_attention.py`)."""
    rounding = None
    if "quantization" in options:
        rounding = lambda x: dequantize(quantize_int8(x))  # noqa: E731
    elif packed:
        if not host_packs_bfloat16():
            pytest.skip("this process widens bfloat16 weights (no AVX512_BF16, or no JIT)")
        rounding = round_to_bfloat16
        plain_probs, plain_attention = ref.attention_probs, ref.attention

        def attention(q, k, v):  # as the model: bfloat16 products from BF16_MIN_CONTEXT keys
            if len(k) < BF16_MIN_CONTEXT:
                return plain_attention(q, k, v)
            probs = round_to_bfloat16(plain_probs(round_to_bfloat16(q), round_to_bfloat16(k)))
            return (probs @ round_to_bfloat16(v).transpose(1, 0, 2)).transpose(1, 0, 2)
        monkeypatch.setattr(ref, "attention", attention)
    if rounding:
        plain_linear = ref.linear
        monkeypatch.setattr(ref, "linear", lambda x, w, b=None: plain_linear(
            rounding(np.ascontiguousarray(x, np.float32)), w, b))
    cfg, weights = load_gpt2(perturbed_ckpt, **options)
    kind = Int8Weight if "quantization" in options else BF16Weight
    assert isinstance(weights.wte, kind) and isinstance(weights.blocks[0].fc_proj_w, kind)
    if packed:
        weights = pack_bfloat16_weights(weights)
        assert isinstance(weights.wte, PackedBF16Weight)
    # >64 rows: BLAS too; packed, past BF16_MIN_CONTEXT keys: attention in bfloat16 too
    n = BF16_MIN_CONTEXT + 32 if packed else 90
    ids = np.random.default_rng(11).integers(0, cfg.vocab_size, n)
    dense = dequantize_weights(weights)
    expected = ref.forward(dense, cfg, ids)
    got = forward(weights, cfg, ids, np.arange(len(ids)))
    # W8A8: where the kernels' float32 and the reference's differ by an ulp before a row is
    # quantized, one activation can land on the other side of a rounding boundary, a whole code
    # (1/127 of the row's peak) apart, and later layers carry it on (0.4% of the peak logit seen
    # on AVX2); float32 rounding alone stays within 2e-4.
    bound = (1e-2 if "quantization" in options else 2e-4) * np.abs(expected).max()
    np.testing.assert_allclose(got, expected, rtol=0, atol=bound)
    logits_1 = forward(weights, cfg, ids[:5], np.arange(5))  # <=64 rows: the kernel
    np.testing.assert_allclose(logits_1, ref.forward(dense, cfg, ids[:5]), rtol=0, atol=bound)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_quantized_from_any_checkpoint_dtype(write_checkpoint, tiny_tensors, dtype):
    """int8 from a float16 or bfloat16 checkpoint is int8 of the float32 values it loads as."""
    stored = {k: torch.from_numpy(v).to(getattr(torch, dtype)) for k, v in tiny_tensors.items()}
    ckpt = write_checkpoint(stored)
    _, plain = load_gpt2(ckpt)
    _, narrow = load_gpt2(ckpt, quantization="int8")
    expected = quantize_int8(plain.blocks[1].attn_w)
    np.testing.assert_array_equal(narrow.blocks[1].attn_w.q, expected.q)
    np.testing.assert_array_equal(narrow.blocks[1].attn_w.scale, expected.scale)
    np.testing.assert_array_equal(narrow.wte.q, quantize_int8(plain.wte).q)


def test_float32_is_the_default_and_loads_plain_arrays(tiny_ckpt):
    for options in ({}, dict(dtype="float32"), dict(dtype="auto")):
        _, weights = load_gpt2(tiny_ckpt, **options)
        assert isinstance(weights.wte, np.ndarray) and weights.blocks[0].attn_w.dtype == np.float32


def test_packed_float32_keeps_every_row():
    """`PackedF32Weight`: rows, take and the lookup give w's rows back exactly, outputs not a
    multiple of the block included; only the last block's padding is added."""
    w = np.random.default_rng(3).standard_normal((37, 5), dtype=np.float32)
    packed = PackedF32Weight.from_rows(w)
    assert packed.shape == (37, 5) and packed.nbytes == 48 * 5 * 4
    np.testing.assert_array_equal(dequantize(packed), w)
    for start, end in ((0, None), (3, 20), (16, 32), (17, 37), (36, 37), (5, 5)):
        np.testing.assert_array_equal(packed.rows(start, end), w[start:end])
    ids = np.array([36, 0, 16, 16, 15])
    np.testing.assert_array_equal(gather_rows(packed, ids), w[ids])
    assert gather_rows(packed, ids).flags.writeable


@pytest.mark.parametrize("checkpoint, variant", [("tiny_ckpt", None), ("llama_ckpt", "llama3-tied"),
                                                 ("llama_ckpt", "llama-gqa")])
def test_packed_weights_give_the_reference_logits(request, checkpoint, variant):
    """Every float32 matrix packed (as the AVX-512 path's engine stores them), a tied LM head
    still one object with the embedding: the model's logits close to the reference's, for a
    prompt and for one token (the packed kernel, or BLAS on the unpacked rows without the JIT)."""
    from nanovllm.model.architectures.registry import (
        ARCHITECTURES,
        architecture_of,
        load_checkpoint,
    )

    path = request.getfixturevalue(checkpoint)
    path = path(variant) if variant else path
    cfg, weights = load_checkpoint(path)
    family = ARCHITECTURES[architecture_of(path)]
    packed = pack_float32_weights(load_checkpoint(path)[1])
    # GPT-2's lm_head is None when tied (the model reads wte): only the matrices it holds count.
    matrices = [m for m in (getattr(packed, name, None) for name in ("wte", "embed", "lm_head"))
                if m is not None]
    assert all(isinstance(m, PackedF32Weight) for m in matrices)
    if hasattr(packed, "embed"):
        assert (packed.lm_head is packed.embed) == (weights.lm_head is weights.embed)
    ids = np.arange(1, 40) % cfg.vocab_size
    for tokens in (ids, ids[:1]):
        expected = family.reference.forward(weights, cfg, tokens)
        got = family.forward(packed, cfg, tokens, np.arange(len(tokens)))
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype, quantization, message", [
    ("float16", None, "dtype must be one of"), ("auto", "int4", "quantization must be"),
    ("bfloat16", "int8", "cannot apply too"),
])
def test_precision_options_are_checked(tiny_ckpt, dtype, quantization, message):
    with pytest.raises(ValueError, match=message):
        check_precision(dtype, quantization)
    with pytest.raises(ValueError, match=message):
        EngineConfig(str(tiny_ckpt), dtype=dtype, quantization=quantization)


@pytest.mark.parametrize("options", [dict(quantization="int8"), dict(dtype="bfloat16")])
def test_engine_generates_with_narrow_weights_and_close_logprobs(tiny_ckpt, options):
    """End to end: greedy tokens and their logprobs next to the float32 engine's."""
    params = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True, logprobs=1)
    prompts = [[1, 2, 3, 4, 5], list(range(100, 180))]  # a decode-only and a BLAS-sized prefill
    plain = LLM(str(tiny_ckpt), num_kv_blocks=32).generate(prompts, params, use_tqdm=False)
    narrow = LLM(str(tiny_ckpt), num_kv_blocks=32, **options).generate(prompts, params,
                                                                      use_tqdm=False)
    for a, b in zip(plain, narrow):
        assert len(b.outputs[0].token_ids) == 12
        first = a.outputs[0].token_ids[0]
        assert b.outputs[0].token_ids[0] == first  # (tiny's first steps are not near-ties)
        lp_a = a.outputs[0].logprobs[0][first].logprob
        lp_b = b.outputs[0].logprobs[0][first].logprob
        assert abs(lp_a - lp_b) < 0.01
