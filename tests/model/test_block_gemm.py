"""The kernels for block-quantized weights (`model/kernels/block_gemm.py`): every kernel this CPU
can run, on every GGML type, against the plain reference (the dequantized activations times
`ggml_blocks.dequantize_blocks`) within float32 rounding, and against the float32 activations
within the bound their quantization gives. Weights are random GGML blocks (any code, any
float16 scale), so every code and offset path is exercised."""

from __future__ import annotations

import numpy as np
import pytest

from nanovllm.model import load_gpt2
from nanovllm.model.architectures import gpt2_reference as ref
from nanovllm.model.architectures.gpt2 import forward
from nanovllm.model.kernels.block_amx import AMX_MIN_ROWS
from nanovllm.model.kernels.block_gemm import (
    AMX,
    AMX_FEW_ROWS,
    PORTABLE,
    block_linear,
    quantize_blocks,
    takes_tiles,
)
from nanovllm.model.layers.linear import embedding_rows, host_block_kernel, linear
from nanovllm.model.platform.cpu import BLOCK_KERNELS, block_kernels, kernel_path
from nanovllm.model.weights.block_quant import (
    BLOCK_TYPES,
    LAYOUTS,
    BlockWeight,
    dequantize_blocks,
    from_float,
    from_gguf,
)
from nanovllm.model.weights.precision import BLOCK_QUANTIZATIONS
from nanovllm.model.weights.quant import (
    convert_matrix,
    dequantize,
    dequantize_weights,
    gather_rows,
    round_to_bfloat16,
)
from tests.model.test_ggml_blocks import random_blocks
from tests.model.test_kernels_vs_reference import assert_within, f32, sum_error

RUNNABLE = block_kernels(kernel_path().features)
# (rows, outputs, super-blocks): one row (decode) and several (a batch, a prefill's; 20 in
# tiles that fetch the next panels, across chunks), outputs that leave panels and tiles over,
# one super-block and several.
SHAPES = [(1, 37, 1), (1, 300, 3), (3, 64, 2), (9, 33, 2), (1, 16, 4), (20, 300, 3)]
# Each of the kernels' code paths, for the instruction sets besides the host's best: 8-bit
# codes with an offset (avx2's signed trick), 4-bit codes, a K-quant with mins, one without.
PATH_TYPES = ["Q8_0", "Q4_0", "Q4_K", "Q6_K"]


def runnable(kernel: str) -> str:
    if kernel not in RUNNABLE:
        pytest.skip(f"this CPU cannot run the {kernel} block kernel")
    return kernel


def weight(type_name: str, n: int, supers: int, seed: int = 1) -> tuple[BlockWeight, np.ndarray]:
    """A random `BlockWeight` [n, supers * span] and the float32 matrix it stands for."""
    per = LAYOUTS[type_name].span // BLOCK_TYPES[type_name].weights
    raw = random_blocks(type_name, n, supers * per, seed)
    shape = (n, supers * LAYOUTS[type_name].span)
    return from_gguf(type_name, raw, shape), dequantize_blocks(type_name, raw, shape)


def check(kernel: str, type_name: str, m: int, n: int, supers: int) -> None:
    w, dense = weight(type_name, n, supers)
    x = f32(m, dense.shape[1], seed=m + n)
    b = f32(n, seed=5)
    quantized = quantize_blocks(x, w.layout).dequantize()
    expected = ref.linear(quantized, dense, b)
    magnitude = np.abs(quantized).astype(np.float64) @ np.abs(dense).T + np.abs(b)
    bound = 4 * sum_error(dense.shape[1] + 1) * magnitude
    assert_within(block_linear(x, w, kernel, b), expected, bound)
    residual = f32(m, n, seed=7)
    into = residual.copy()
    assert block_linear(x, w, kernel, b, residual=into) is into
    assert_within(into, expected + residual, bound + 2 * np.abs(residual) * 2.0 ** -24)


@pytest.mark.parametrize("type_name", list(BLOCK_TYPES))
@pytest.mark.parametrize("m, n, supers", SHAPES)
def test_host_kernel_matches_reference(type_name, m, n, supers):
    check(host_block_kernel(), type_name, m, n, supers)


@pytest.mark.parametrize("kernel", [k for k in BLOCK_KERNELS if k not in (PORTABLE, AMX)])
@pytest.mark.parametrize("type_name", PATH_TYPES)
def test_every_instruction_set_matches_reference(kernel, type_name):
    for m, n, supers in SHAPES[1:4]:
        check(runnable(kernel), type_name, m, n, supers)


@pytest.mark.parametrize("type_name", list(BLOCK_TYPES))
def test_amx_kernel_is_within_bfloat16_rounding(type_name):
    """The "amx" kernel on AMX_MIN_ROWS rows and more: the activations and the dequantized
    weights rounded to bfloat16 (2^-9 each), float32 sums; row tiles and panels left over
    singly; a bias and a residual. Fewer rows run the VNNI kernel's code, equal."""
    runnable(AMX)
    for m, n, supers in ((AMX_MIN_ROWS, 48, 1), (AMX_MIN_ROWS + 36, 37, 3)):
        w, dense = weight(type_name, n, supers)
        x, b = f32(m, dense.shape[1], seed=m), f32(n, seed=5)
        expected = ref.linear(x, dense, b)
        magnitude = np.abs(x).astype(np.float64) @ np.abs(dense).T + np.abs(b)
        bound = (2.0 ** -8 + 4 * sum_error(dense.shape[1] + 1)) * magnitude
        assert_within(block_linear(x, w, AMX, b), expected, bound)
        residual = f32(m, n, seed=7)
        into = residual.copy()
        assert block_linear(x, w, AMX, b, residual=into) is into
        assert_within(into, expected + residual, bound + 2 * np.abs(residual) * 2.0 ** -24)
    few = f32(AMX_MIN_ROWS - 1, dense.shape[1], seed=2)
    np.testing.assert_array_equal(block_linear(few, w, AMX), block_linear(few, w, AMX_FEW_ROWS))


@pytest.mark.parametrize("type_name", list(BLOCK_TYPES))
def test_portable_kernel_matches_reference(type_name):
    for m, n, supers in SHAPES[:3]:
        check(PORTABLE, type_name, m, n, supers)


def test_activation_quantization_is_within_half_a_step():
    """x quantized per super-block: each element within half its block's step, the sums the
    codes' sums, so the product with float32 x is off by at most sum over blocks of step / 2
    times sum |w| there."""
    x = f32(3, 512, seed=2, scale=3)
    x[1, :256] = 0.0  # an all-zero block: scale 0
    for type_name in ("Q4_0", "Q4_K", "Q6_K"):
        layout = LAYOUTS[type_name]
        rows = quantize_blocks(x, layout)
        step = np.repeat(rows.scale, layout.span, axis=1)
        assert np.all(np.abs(rows.dequantize() - x) <= step / 2 * (1 + 2.0 ** -20))
        sums = rows.q.reshape(3, -1, layout.sub).astype(np.int32).sum(axis=2)
        np.testing.assert_array_equal(rows.sums, sums)
    assert np.all(rows.scale[1, 0] == 0) and np.all(rows.q[1, :256] == 0)


@pytest.mark.parametrize("type_name", ["Q8_0", "Q4_0", "Q4_K"])
def test_linear_on_float_activations_within_their_quantization(type_name):
    """`linear` on a BlockWeight against x (not quantized) @ the dequantized weights: off by the
    activations' rounding, half a step of each block times the weights' magnitudes there."""
    w, dense = weight(type_name, 70, 2, seed=4)
    x = f32(5, dense.shape[1], seed=3)
    layout = w.layout
    rows = quantize_blocks(x, layout)
    half_step = np.repeat(rows.scale, layout.span, axis=1) / 2
    bound = half_step.astype(np.float64) @ np.abs(dense).T.astype(np.float64)
    bound += 4 * sum_error(dense.shape[1]) * (np.abs(x) @ np.abs(dense).T)
    assert_within(linear(x, w), ref.linear(x, dense), bound)


def test_quantization_option_makes_block_weights():
    w = f32(40, 512, seed=6)
    for option, type_name in (("q8_0", "Q8_0"), ("q4_0", "Q4_0"), ("q4_k", "Q4_K")):
        stored = convert_matrix(w, quantization=option)
        assert isinstance(stored, BlockWeight) and stored.type_name == type_name
        np.testing.assert_array_equal(dequantize(stored), from_float(type_name, w).rows())
    assert convert_matrix(f32(8, 96), quantization="q4_k").type_name == "Q4_0"  # not 256s
    assert convert_matrix(f32(8, 33), quantization="q4_0").__class__.__name__ == "Int8Weight"


@pytest.mark.parametrize("type_name", list(BLOCK_TYPES))
def test_gather_and_rows_read_the_repacked_weights(type_name):
    """The embedding's lookup (each row's lane of its panel, compiled: `embedding_rows`), the
    format's own (`gather_rows`: whole panels) and `rows` read the very values the file's
    blocks stand for; a row id outside the table is refused, padding rows included."""
    w, dense = weight(type_name, 50, 2, seed=8)
    ids = np.array([49, 0, 17, 17, 33, 15, 16])
    np.testing.assert_array_equal(embedding_rows(w, ids), dense[ids])
    np.testing.assert_array_equal(gather_rows(w, ids), dense[ids])
    np.testing.assert_array_equal(w.rows(15, 33), dense[15:33])
    assert w.nbytes == w.packed.nbytes
    for outside in (50, 63, -1):  # (rows 50-63 are the last panel's zero padding)
        for lookup in (embedding_rows, gather_rows):
            with pytest.raises(IndexError):
                lookup(w, np.array([0, outside]))


def rounded_as_the_kernel(x, w, layout):
    """x [M, K] and w as the host's block kernel rounds them: x per block to int8 codes, or on
    AMX's tiles (from AMX_MIN_ROWS rows) x and the dequantized weights to bfloat16."""
    if takes_tiles(host_block_kernel(), x.shape[0]):
        return round_to_bfloat16(x), round_to_bfloat16(w)
    return quantize_blocks(x, layout).dequantize(), w


@pytest.mark.parametrize("quantization", ["q8_0", "q4_0", "q4_k"])
def test_model_on_block_weights_is_the_reference_model_on_their_float32(perturbed_ckpt,
                                                                       quantization,
                                                                       monkeypatch):
    """`--quantization q8_0 | q4_0 | q4_k` on a safetensors GPT-2: the model on the block
    weights agrees with the reference model on their dequantized float32, when the reference's
    linear layers round their inputs as the kernels do (`rounded_as_the_kernel`; q4_k's
    64-input matrices fall back to q4_0: blocks of 32 there, 256 elsewhere). Not to float32
    rounding: the kernels' inputs differ from the reference's in their last bits (its layer
    norm and GELU are other float32 sums), and an input that close to a rounding tie takes the
    next code, one step of its block (about 1/127 of the block's largest input) on that
    product."""
    type_name = BLOCK_QUANTIZATIONS[quantization]

    def layout_of(in_dim: int):
        return LAYOUTS["Q4_0" if type_name == "Q4_K" and in_dim % 256 else type_name]

    plain_linear = ref.linear
    monkeypatch.setattr(ref, "linear", lambda x, w, b=None: plain_linear(*rounded_as_the_kernel(
        np.ascontiguousarray(x, np.float32), w, layout_of(w.shape[1])), b))
    cfg, weights = load_gpt2(perturbed_ckpt, quantization=quantization)
    assert isinstance(weights.wte, BlockWeight)
    assert weights.blocks[0].fc_proj_w.type_name == type_name  # 256 inputs: q4_k's own blocks
    ids = np.random.default_rng(11).integers(0, cfg.vocab_size, 90)
    dense = dequantize_weights(weights)
    for n in (90, 5):  # a prefill's rows, a few
        expected = ref.forward(dense, cfg, ids[:n])
        got = forward(weights, cfg, ids[:n], np.arange(n))
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-2 * np.abs(expected).max())
