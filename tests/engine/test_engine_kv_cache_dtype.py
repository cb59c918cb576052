"""kv_cache_dtype="float16": twice the blocks in the same memory, and logprobs that stay within
float16 rounding of transformers' through chunked prefill, decode and preemption; "auto" is
float16 under bfloat16 and block-quantized weights, and moves bfloat16's logprobs little."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from engine_checks import random_prompts, worst_logprob_error

from nanovllm import EngineConfig, SamplingParams
from nanovllm.config import kv_cache_dtype_of
from nanovllm.runner.kv_cache import kv_bytes_per_block

NUM_TOKENS = 12


def test_float16_pool_holds_twice_the_blocks_in_the_same_memory(make_engine):
    budget = 3 << 20
    full = make_engine(num_kv_blocks=None, kv_cache_memory_bytes=budget)
    half = make_engine(num_kv_blocks=None, kv_cache_memory_bytes=budget, kv_cache_dtype="float16")
    assert half.num_kv_blocks == 2 * full.num_kv_blocks
    assert half.runner.kv_cache.dtype == np.float16
    assert half.runner.kv_cache.nbytes == half.num_kv_blocks * kv_bytes_per_block(
        half.model_config, 16, "float16") <= budget
    assert half.get_stats().num_total_blocks == half.num_kv_blocks


@pytest.mark.parametrize("options", [
    dict(num_kv_blocks=40, max_num_batched_tokens=16),  # chunked prefill, preemption
    dict(num_kv_blocks=400),
], ids=["small-pool-chunked", "roomy"])
def test_float16_cache_logprobs_stay_close_to_transformers(make_llm, hf_tiny, options):
    prompts = random_prompts(seed=5, count=10, low=1, high=50)
    params = SamplingParams(temperature=0.0, max_tokens=NUM_TOKENS, logprobs=0,
                            prompt_logprobs=0, ignore_eos=True)
    outputs = make_llm(block_size=4, kv_cache_dtype="float16", **options).generate(
        prompts, params, use_tqdm=False)
    exact = make_llm(block_size=4, **options).generate(prompts, params, use_tqdm=False)
    assert any(a.outputs[0].cumulative_logprob != b.outputs[0].cumulative_logprob
               for a, b in zip(outputs, exact)), "float16 rounding should show somewhere"
    worst = worst_logprob_error(hf_tiny, prompts, outputs)
    assert worst < 1e-3  # the tolerance float32 caches are held to (test_engine_logprobs)


def test_unknown_kv_cache_dtype_is_refused(tiny_ckpt):
    with pytest.raises(ValueError, match="kv_cache_dtype must be one of 'auto', 'float32', "
                                         "'float16', got 'fp8'"):
        EngineConfig(str(tiny_ckpt), kv_cache_dtype="fp8")


@pytest.mark.parametrize("dtype, blocks, option, stored", [
    ("bfloat16", False, "auto", "float16"), ("auto", True, "auto", "float16"),
    ("auto", False, "auto", "float32"), ("float32", False, "auto", "float32"),
    ("bfloat16", False, "float32", "float32"), ("auto", True, "float32", "float32"),
    ("auto", False, "float16", "float16")])
def test_auto_cache_is_float16_under_bfloat16_or_block_weights_only(dtype, blocks, option,
                                                                     stored):
    assert kv_cache_dtype_of(option, dtype, blocks) == stored


def test_bfloat16_engine_says_its_cache_is_float16_and_float32_stays_exact(make_engine, caplog):
    with caplog.at_level(logging.INFO, logger="nanovllm"):
        half = make_engine(dtype="bfloat16")
    assert half.runner.kv_cache.dtype == np.float16
    assert "'auto' under bfloat16 or block-quantized weights" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="nanovllm"):
        full = make_engine(dtype="bfloat16", kv_cache_dtype="float32")
    assert full.runner.kv_cache.dtype == np.float32
    assert "'auto' under bfloat16" not in caplog.text


def test_bfloat16_default_cache_stays_close_to_a_float32_cache(make_llm):
    """Under bfloat16 weights the float16 cache moves the decodes' logprobs by its rounding of
    K/V only (2**-11, eight times finer than the activations' bfloat16), and rarely a token."""
    prompts = random_prompts(seed=7, count=8, low=5, high=40)
    params = SamplingParams(temperature=0.0, max_tokens=NUM_TOKENS, logprobs=0, ignore_eos=True)
    half, full = (make_llm(block_size=4, dtype="bfloat16", **kv).generate(
        prompts, params, use_tqdm=False) for kv in ({}, {"kv_cache_dtype": "float32"}))
    worst, same = 0.0, 0
    for a, b in (((x.outputs[0]), (y.outputs[0])) for x, y in zip(half, full)):
        same += a.token_ids == b.token_ids
        for token, other, lp_a, lp_b in zip(a.token_ids, b.token_ids, a.logprobs, b.logprobs):
            if token != other:  # (a near tie went the other way: what follows differs)
                break
            # decodes read the cache (a prompt's chunk attends to its keys before they are stored)
            worst = max(worst, abs(lp_a[token].logprob - lp_b[token].logprob))
    assert 0.0 < worst < 5e-3, worst
    assert same >= len(prompts) - 1


@pytest.mark.parametrize("options, stored", [
    (dict(quantization="q4_0"), np.float16), (dict(quantization="int8"), np.float32),
    (dict(quantization="q4_0", kv_cache_dtype="float32"), np.float32)])
def test_block_quantized_engine_takes_a_float16_cache(make_engine, options, stored):
    """As llama.cpp's cache on a GGUF file, whose block types reach the same choice
    (`engine_setup.in_blocks`)."""
    assert make_engine(**options).runner.kv_cache.dtype == stored
