"""kv_cache_dtype="float16": twice the blocks in the same memory, and logprobs that stay within
float16 rounding of transformers' through chunked prefill, decode and preemption."""

from __future__ import annotations

import numpy as np
import pytest
from engine_checks import random_prompts, worst_logprob_error

from nanovllm import EngineConfig, SamplingParams
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
