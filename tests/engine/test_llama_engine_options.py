"""The engine's options on the Llama family, held to what GPT-2's own tests hold them to:
int8 and bfloat16 weights (test_quant.py's bounds), a float16 KV cache's logprobs
(test_engine_kv_cache_dtype.py's), n > 1 sharing the prompt's blocks
(test_engine_prefix_caching.py), and prefix caching with chunked prefill across Mistral's
sliding window (greedy tokens equal transformers'). Checkpoints: tests/llama_checkpoints.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from engine_checks import (
    check_engine_invariants,
    hf_greedy,
    random_prompts,
    worst_logprob_error,
)
from llama_checkpoints import LLAMA_VARIANTS, write_hf_llama

from nanovllm import LLM, EngineConfig, LLMEngine, SamplingParams
from nanovllm.model.architectures import llama_reference
from nanovllm.model.architectures.registry import family_of, load_checkpoint
from nanovllm.model.weights.quant import (
    BF16Weight,
    Int8Weight,
    dequantize,
    dequantize_weights,
    quantize_int8,
)

NARROW = [dict(quantization="int8"), dict(dtype="bfloat16")]


@pytest.fixture(scope="module")
def gpt2_init(tmp_path_factory):
    """gpt2_init(variant) -> a LLAMA_VARIANTS checkpoint initialised as GPT-2's tiny one is (std
    0.02, not the variants' 0.1): logits of the same spread, so GPT-2's bounds on how far a
    narrower number format moves them apply as they are."""
    made = {}

    def get(variant: str):
        if variant not in made:
            family, overrides = LLAMA_VARIANTS[variant]
            made[variant] = write_hf_llama(tmp_path_factory.mktemp(variant), family,
                                           **{**overrides, "initializer_range": 0.02})
        return made[variant]
    return get


def row_errors(got: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """Each position's largest logit difference, relative to the largest logit."""
    return np.abs(got - expected).max(axis=-1) / np.abs(expected).max()


@pytest.mark.parametrize("options", NARROW, ids=["int8", "bfloat16"])
@pytest.mark.parametrize("variant", ["llama-gqa", "qwen2", "mistral-window", "qwen3"])
def test_model_on_narrow_weights_is_the_reference_on_their_float32(llama_ckpt, variant, options,
                                                                  monkeypatch):
    """The fast path on converted weights against the Llama reference on the float32 matrices
    they stand for, to GPT-2's bound (2e-4 of the largest logit, test_quant.py).

    int8 is W8A8: the reference's linear layers quantize their input rows first, as the kernels
    do. An activation within float32 rounding of a rounding boundary of its int8 step may round
    either way in the two paths (their sums differ in order); that token's row, and the later
    rows that attend to it, then differ by about one int8 step of one activation (up to ~1.5% of
    the largest logit on these checkpoints; Mistral's window bounds which rows). So for int8
    most rows must be within the bound and every row within 3% of it; a wrong scale, offset or
    layout would move every row."""
    if "quantization" in options:
        plain_linear = llama_reference.linear
        monkeypatch.setattr(llama_reference, "linear", lambda x, w, b=None: plain_linear(
            dequantize(quantize_int8(np.ascontiguousarray(x, np.float32))), w, b))
    cfg, weights = load_checkpoint(llama_ckpt(variant), **options)
    kind = Int8Weight if "quantization" in options else BF16Weight
    assert isinstance(weights.embed, kind) and isinstance(weights.layers[0].qkv_w, kind)
    assert isinstance(weights.layers[1].gate_up_w, kind) and isinstance(weights.layers[1].down_w, kind)
    ids = np.random.default_rng(11).integers(0, cfg.vocab_size, 90)  # >64 rows: BLAS too
    expected = llama_reference.forward(dequantize_weights(weights), cfg, ids)
    forward = family_of(cfg).forward
    for n in (90, 5):  # 5 rows: the kernel
        errors = row_errors(forward(weights, cfg, ids[:n], np.arange(n)), expected[:n])
        if "quantization" in options:
            assert (errors <= 2e-4).mean() >= 0.75 and errors.max() < 0.03, errors
        else:
            assert errors.max() <= 2e-4, errors


@pytest.mark.parametrize("options", NARROW, ids=["int8", "bfloat16"])
@pytest.mark.parametrize("variant", ["llama-gqa", "mistral-window", "qwen3"])
def test_engine_on_narrow_weights_stays_close_to_float32(gpt2_init, variant, options):
    """End to end, GPT-2's bound (test_quant.py): the first greedy token equal, its logprob
    within 0.01 of the float32 engine's."""
    params = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True, logprobs=1)
    prompts = [[1, 2, 3, 4, 5], list(range(100, 180))]  # a decode-only and a BLAS-sized prefill
    model = str(gpt2_init(variant))
    plain = LLM(model, num_kv_blocks=32).generate(prompts, params, use_tqdm=False)
    narrow = LLM(model, num_kv_blocks=32, **options).generate(prompts, params, use_tqdm=False)
    for a, b in zip(plain, narrow):
        assert len(b.outputs[0].token_ids) == 12
        first = a.outputs[0].token_ids[0]
        assert b.outputs[0].token_ids[0] == first
        lp_a = a.outputs[0].logprobs[0][first].logprob
        lp_b = b.outputs[0].logprobs[0][first].logprob
        assert abs(lp_a - lp_b) < 0.01


@pytest.mark.parametrize("variant", ["llama-gqa", "mistral-window", "qwen3"])
def test_float16_cache_logprobs_stay_close_to_transformers(gpt2_init, hf_llama, variant):
    """Through chunked prefill, decode and preemption on a 40-block pool, within the 1e-3 that
    float32 caches are held to (GPT-2: test_engine_kv_cache_dtype.py)."""
    prompts = random_prompts(seed=5, count=10, low=1, high=50)
    params = SamplingParams(temperature=0.0, max_tokens=12, logprobs=0, prompt_logprobs=0,
                            ignore_eos=True)
    llm = LLM(str(gpt2_init(variant)), block_size=4, num_kv_blocks=40,
              max_num_batched_tokens=16, kv_cache_dtype="float16")
    assert llm.engine.runner.kv_cache.dtype == np.float16
    outputs = llm.generate(prompts, params, use_tqdm=False)
    assert llm.engine.get_stats().num_preemptions_total > 0
    worst = worst_logprob_error(hf_llama(gpt2_init(variant)), prompts, outputs)
    assert 0 < worst < 1e-3


PREFIX = random_prompts(seed=21, count=1, low=30, high=30)[0]  # 7.5 blocks of 4


@pytest.mark.parametrize("variant", ["llama-gqa", "mistral-window"])
def test_n_samples_share_prompt_blocks_and_equal_unshared_ones(llama_ckpt, hf_llama, variant):
    """n = 3 seeded samples hold the prompt's full blocks once (reference count 3); their
    tokens are those of an engine without prefix caching, and greedy n = 2 gives transformers'
    greedy continuation twice."""
    model = str(llama_ckpt(variant))
    seeded = SamplingParams(n=3, seed=5, max_tokens=10, ignore_eos=True)
    results = []
    for caching in (True, False):
        engine = LLMEngine(EngineConfig(model=model, block_size=4, num_kv_blocks=40,
                                        enable_prefix_caching=caching))
        engine.add_request("n", PREFIX, seeded)
        seqs, shared_seen, final = engine.requests["n"].seqs, False, None
        while engine.has_unfinished_requests():
            for out in engine.step():
                final = out
            check_engine_invariants(engine)
            if caching and all(s.block_table for s in seqs):
                first = engine.block_manager.blocks[seqs[0].block_table[0]]
                shared_seen |= ({s.block_table[0] for s in seqs} == {first.block_id}
                                and first.ref_count == 3)
        results.append([c.token_ids for c in final.outputs])
        stats = engine.get_stats()
        assert stats.num_free_blocks == stats.num_total_blocks
        if caching:
            assert shared_seen, "the 3 samples never shared their first prompt block"
            assert stats.prefix_cache_hits >= 2 * (len(PREFIX) - len(PREFIX) % 4 - 4)
    assert results[0] == results[1] and len({tuple(t) for t in results[0]}) == 3

    greedy = LLM(model, block_size=4, num_kv_blocks=40).generate(
        [PREFIX], SamplingParams(n=2, temperature=0, max_tokens=10, ignore_eos=True),
        use_tqdm=False)[0]
    expected = hf_greedy(hf_llama(llama_ckpt(variant)), PREFIX, 10)
    assert [c.token_ids for c in greedy.outputs] == [expected, expected]


def test_prefix_cache_across_the_sliding_window_equals_transformers(llama_ckpt, hf_llama):
    """Mistral's window (12) is shorter than the shared prefix (30), the prompts and the
    generation. Requests reuse cached blocks both beside a running one and after it finished,
    under chunked prefill and a 24-block pool that preempts (three requests share the prefix's 7
    blocks and need 7 more each): every continuation is transformers' for that prompt alone."""
    model = llama_ckpt("mistral-window")
    suffixes = random_prompts(seed=22, count=6, low=1, high=11)
    prompts = [PREFIX + s for s in suffixes]
    llm = LLM(str(model), block_size=4, num_kv_blocks=24, max_num_batched_tokens=9)
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    outputs = llm.generate(prompts[:3], params, use_tqdm=False)  # running beside each other
    outputs += llm.generate(prompts[3:], params, use_tqdm=False)  # after the first ones ended
    stats = llm.engine.get_stats()
    assert stats.prefix_cache_hits >= 5 * 4 * 4, "later prompts were meant to hit the cache"
    assert stats.num_preemptions_total > 0, "the pool was meant to force preemption"
    assert outputs[-1].num_cached_tokens >= 4 * 4
    hf = hf_llama(model)
    for prompt, out in zip(prompts, outputs):
        assert out.outputs[0].token_ids == hf_greedy(hf, prompt, 16), f"{len(prompt)} tokens"
    assert stats.num_free_blocks == stats.num_total_blocks
