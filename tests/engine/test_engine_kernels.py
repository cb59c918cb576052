"""The engine compiles its numba kernels when it starts, for every signature a step uses, so the
first request never waits seconds for a compile."""

from __future__ import annotations

import subprocess
import sys

import pytest

from nanovllm import LLM, SamplingParams
from nanovllm.model.kernels.bf16_attention import (
    heads_matmul,
    pack_context,
    round_heads,
)
from nanovllm.model.kernels.bf16_gemm import matmul_bf16, round_rows, round_rows_parallel
from nanovllm.model.kernels.block_amx import AMX_MIN_ROWS
from nanovllm.model.kernels.block_gemm import kernel_functions, take_rows
from nanovllm.model.kernels.int8_gemm import MATMULS, quantize_rows, quantize_rows_parallel
from nanovllm.model.kernels.shared import softmax_rows_
from nanovllm.model.layers.activations import gelu_int8_, gelu_rows_
from nanovllm.model.layers.attention import (
    BF16_MIN_CONTEXT,
    CHUNK_KERNELS,
    DECODE_KERNELS,
    causal_softmax_,
    write_slots,
)
from nanovllm.model.layers.linear import (
    host_block_kernel,
    host_int8_kernel,
    host_packs_bfloat16,
    matmul_nt,
    matmul_packed,
)
from nanovllm.model.layers.norms import layer_norm_int8_, layer_norm_rows_
from nanovllm.model.weights.block_quant import BlockWeight
from nanovllm.runner.beam import top_logprobs_
from nanovllm.values.beam_search_params import BeamSearchParams

# Decode and prefill attention each have compiled ways (register tiles, of either width for
# prefill, or row by row), of which start-up compiles the one this CPU and model take: neither
# may compile more later.
DECODE_WAYS, CHUNK_WAYS = tuple(DECODE_KERNELS.values()), tuple(CHUNK_KERNELS.values())


def signatures(kernels) -> list[list]:
    return [list(k.signatures) for k in kernels]


@pytest.mark.parametrize("kv_cache_dtype", ["auto", "float16"])
@pytest.mark.parametrize("checkpoint", ["tiny_ckpt", "gpt2_ckpt"])
def test_first_request_compiles_nothing_new(request, checkpoint, kv_cache_dtype):
    """On the tiny test model and on GPT-2's real shapes, whose loaded arrays differ in kind
    (its F32 biases stay read-only views of the file)."""
    llm = LLM(str(request.getfixturevalue(checkpoint)), num_kv_blocks=64,
              kv_cache_dtype=kv_cache_dtype)
    kernels = (matmul_nt, matmul_packed, layer_norm_rows_, gelu_rows_, write_slots,
               softmax_rows_, causal_softmax_, top_logprobs_, *DECODE_WAYS, *CHUNK_WAYS)
    before = signatures(kernels)
    llm.generate([[1, 2, 3], [4, 5], list(range(1, 40))],
                 SamplingParams(max_tokens=4, ignore_eos=True))
    llm.beam_search([[1, 2, 3]], BeamSearchParams(2, 3, ignore_eos=True))
    assert [list(k.signatures) for k in kernels] == before


def test_first_int8_request_compiles_nothing_new(tiny_ckpt):
    """W8A8: a long prefill quantizes its activations on the threads (`parallel.on_threads`);
    start-up compiled that quantizer too, not only the one decodes use."""
    llm = LLM(str(tiny_ckpt), num_kv_blocks=64, quantization="int8")
    kernels = (quantize_rows, quantize_rows_parallel, MATMULS[host_int8_kernel()],
               layer_norm_int8_, gelu_int8_, write_slots)
    before, ways = signatures(kernels), signatures(DECODE_WAYS + CHUNK_WAYS)
    llm.generate([list(range(1, 40)), [4, 5]], SamplingParams(max_tokens=4, ignore_eos=True))
    assert all(before)  # start-up compiled each, the fused layer norm and GELU included
    assert any(ways[:2]) and any(ways[2:])  # one way of each attention
    assert signatures(kernels) == before and signatures(DECODE_WAYS + CHUNK_WAYS) == ways


def test_first_block_quantized_request_compiles_nothing_new(tiny_ckpt):
    """q4_0 (a GGUF file's kind of weights): start-up compiled the products of the model's
    block types (a long prefill's too: on AMX, the tiles') and the embedding's lookup from its
    panels."""
    llm = LLM(str(tiny_ckpt), num_kv_blocks=64, quantization="q4_0")
    assert isinstance(llm.engine.runner.weights.wte, BlockWeight)
    kernels = (take_rows, *kernel_functions(host_block_kernel()))
    before = signatures(kernels)
    llm.generate([list(range(1, AMX_MIN_ROWS + 16)), [4, 5]],
                 SamplingParams(max_tokens=4, ignore_eos=True))
    assert before[0] and signatures(kernels) == before


def test_first_bfloat16_request_compiles_nothing_new(tiny_ckpt):
    """bfloat16 on the avx512bf16 kernel: start-up compiled the kernel and both roundings of
    the activations (a long prefill's on the threads), and prefill attention's packing,
    rounding and products (which a prompt of BF16_MIN_CONTEXT tokens or more takes)."""
    if not host_packs_bfloat16():
        pytest.skip("this process widens bfloat16 weights (no AVX512_BF16, or no JIT)")
    llm = LLM(str(tiny_ckpt), num_kv_blocks=64, dtype="bfloat16")
    kernels = (round_rows, round_rows_parallel, matmul_bf16, write_slots, causal_softmax_,
               pack_context, round_heads, heads_matmul)
    before, ways = signatures(kernels), signatures(DECODE_WAYS)
    llm.generate([list(range(1, BF16_MIN_CONTEXT + 40)), [4, 5]],
                 SamplingParams(max_tokens=4, ignore_eos=True))
    assert all(before) and any(ways)
    assert signatures(kernels) == before and signatures(DECODE_WAYS) == ways


COMPILED_ELSEWHERE = """
from nanovllm.model.layers.attention import compile_prefill_attention
from nanovllm.model.layers.kernel_needs import KernelNeeds
compile_prefill_attention(KernelNeeds(heads=(4, 4, 16)))
"""


def test_a_new_process_finds_prefill_attention_in_numbas_cache():
    """Start-up skips the helper processes (`compile_aside`) once numba's disk cache holds
    prefill attention as this CPU runs it: the check reads that very kernel, and a kernel
    compiled in one process is found by the next (a cached closure is keyed by its variables,
    so none may differ from process to process)."""
    from numba import config

    if config.DISABLE_JIT:
        pytest.skip("nothing is compiled under NUMBA_DISABLE_JIT")
    subprocess.run([sys.executable, "-c", COMPILED_ELSEWHERE], check=True, timeout=900)
    found = subprocess.run([sys.executable, "-c", "from nanovllm.runner.compile_aside import "
                            "attention_cached; print(attention_cached())"],
                           check=True, timeout=300, capture_output=True, text=True)
    assert found.stdout.split()[-1] == "True"
