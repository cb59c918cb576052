"""LoRA adapters through the whole engine equal PEFT's merged model in transformers.

On GPT-2 (c_attn, c_proj, c_fc: Conv1D, fan_in_fan_out), Llama and Qwen3 (q, k, v, o, gate, up,
down, fused in our weights), adapters PEFT wrote with random A and B give transformers' greedy
tokens of the merged model, and logprobs within the bound the other parity tests use. A batch
mixing adapters and rows without one gives each row what it gives alone, and the prefix cache
never hands one adapter's K/V to another.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lora_checkpoints import hf_base, hf_merged

from nanovllm import LLM, LoRARequest, SamplingParams

NUM_TOKENS = 10
PROMPTS = [np.random.default_rng(n).integers(0, 1000, n).tolist() for n in (3, 9, 17, 30)]
LOGPROB_TOL = 1e-3  # tests/engine/test_llama_greedy_parity.py's
BF16_TOL = 0.01  # tests/engine/test_llama_engine_options.py's, bfloat16 weights against float32
MIXED_TOL = 1e-4  # a batch's rows and one alone may go through different kernels (BLAS, ...)
ARCHS = ["gpt2", "llama", "qwen3"]


def greedy(hf, prompt: list[int]) -> list[int]:
    with torch.no_grad():
        out = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt),
                          dtype=torch.long), do_sample=False, max_new_tokens=NUM_TOKENS,
                          min_new_tokens=NUM_TOKENS, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def logprobs_of(hf, token_ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return torch.log_softmax(hf(torch.tensor([token_ids])).logits[0].double(), -1).numpy()


def make_llm(base, **options) -> LLM:
    return LLM(str(base), enable_lora=True, block_size=4, num_kv_blocks=200, **options)


PARAMS = SamplingParams(temperature=0.0, max_tokens=NUM_TOKENS, min_tokens=NUM_TOKENS,
                        logprobs=2, prompt_logprobs=1)


def check_against(hf, prompt: list[int], out) -> None:
    """Greedy tokens equal hf's, every logprob (sampled and prompt) within LOGPROB_TOL."""
    tokens = out.outputs[0].token_ids
    assert tokens == greedy(hf, prompt)
    ref = logprobs_of(hf, prompt + tokens)
    for i, (token, entry) in enumerate(zip(tokens, out.outputs[0].logprobs)):
        assert abs(entry[token].logprob - ref[len(prompt) - 1 + i, token]) < LOGPROB_TOL
    for pos in range(1, len(prompt)):
        assert abs(out.prompt_logprobs[pos][prompt[pos]].logprob
                   - ref[pos - 1, prompt[pos]]) < LOGPROB_TOL


@pytest.mark.parametrize("arch", ARCHS)
def test_adapter_equals_peft_merged_model(lora_base, lora_adapter, arch):
    base, adapter = lora_base(arch), lora_adapter(arch)
    llm, hf = make_llm(base), hf_merged(base, adapter)
    lora = LoRARequest("a", 1, str(adapter))
    outputs = llm.generate(PROMPTS, PARAMS, use_tqdm=False, lora_request=lora)
    plain = llm.generate(PROMPTS, PARAMS, use_tqdm=False)
    for prompt, out in zip(PROMPTS, outputs):
        check_against(hf, prompt, out)
    # The adapter changes the output (its update is not vanishingly small), and the base
    # model's requests after it are the base model's.
    assert [o.outputs[0].token_ids for o in outputs] != [o.outputs[0].token_ids for o in plain]
    for prompt, out in zip(PROMPTS, plain):
        check_against(hf_base(base), prompt, out)


@pytest.mark.parametrize("arch,options", [
    ("gpt2", dict(targets=["c_attn"], use_rslora=True, r=8, alpha=4)),
    ("llama", dict(targets=["k_proj", "up_proj"], r=2, alpha=16)),  # members inside fusions
    ("qwen3", dict(targets=["v_proj", "o_proj", "down_proj"], use_rslora=True)),
], ids=["gpt2-rslora-c_attn", "llama-k-up", "qwen3-v-o-down-rslora"])
def test_partial_targets_and_scaling(lora_base, lora_adapter, arch, options):
    base, adapter = lora_base(arch), lora_adapter(arch, seed=5, **options)
    hf = hf_merged(base, adapter)
    out = make_llm(base).generate(PROMPTS, PARAMS, use_tqdm=False,
                                  lora_request=LoRARequest("a", 7, str(adapter)))
    for prompt, o in zip(PROMPTS, out):
        check_against(hf, prompt, o)


@pytest.mark.parametrize("arch", ARCHS)
def test_mixed_batch_equals_each_alone(lora_base, lora_adapter, arch):
    """Three adapters and rows without one in one batch, the same prompts under each (so the
    prefix cache would hand one's blocks to another if it keyed them by tokens alone)."""
    base = lora_base(arch)
    loras = [LoRARequest(f"a{i}", i, str(lora_adapter(arch, seed=i))) for i in (1, 2, 3)]
    prompt = PROMPTS[-1]
    choice = [loras[0], None, loras[1], loras[2], None, loras[0], loras[1]]
    prompts = [prompt if i % 2 else PROMPTS[2] + [i] for i in range(len(choice))]
    llm = make_llm(base)
    mixed = llm.generate(prompts, PARAMS, use_tqdm=False, lora_request=choice)
    for p, lora, out in zip(prompts, choice, mixed):
        alone = make_llm(base, enable_prefix_caching=False).generate(
            [p], PARAMS, use_tqdm=False, lora_request=lora)[0]
        assert out.outputs[0].token_ids == alone.outputs[0].token_ids
        for a, b in zip(out.outputs[0].logprobs, alone.outputs[0].logprobs):
            assert a.keys() == b.keys()
            assert all(abs(a[t].logprob - b[t].logprob) < MIXED_TOL for t in a)
    first = mixed[0].outputs[0].token_ids
    assert any(o.outputs[0].token_ids != first for o in mixed[1::2]), "adapters differ"


def test_prefix_cache_keys_blocks_by_adapter(lora_base, lora_adapter):
    base = lora_base("gpt2")
    one, two = (LoRARequest(f"a{i}", i, str(lora_adapter("gpt2", seed=i))) for i in (1, 2))
    llm = make_llm(base)
    prompt = PROMPTS[-1]
    params = SamplingParams(temperature=0.0, max_tokens=2)
    llm.generate([prompt], params, use_tqdm=False, lora_request=one)
    cached = {name: llm.generate([prompt], params, use_tqdm=False, lora_request=lora)[0]
              .num_cached_tokens for name, lora in (("two", two), ("base", None), ("one", one))}
    assert cached["two"] == 0 and cached["base"] == 0
    assert cached["one"] == 4 * ((len(prompt) - 1) // 4)  # every full block but the last token's


@pytest.mark.parametrize("precision", [dict(dtype="bfloat16"), dict(quantization="int8")],
                         ids=["bfloat16", "int8"])
def test_narrow_bases_mix_like_alone(lora_base, lora_adapter, precision):
    """Adapters (bfloat16 or float32 A and B) beside bfloat16 or int8 base weights: a mixed batch still
    gives each row what it gives alone, and the adapter still changes the output."""
    base = lora_base("llama")
    loras = [LoRARequest(f"a{i}", i, str(lora_adapter("llama", seed=i))) for i in (1, 2)]
    choice = [loras[0], None, loras[1], loras[0]]
    prompts = [PROMPTS[-1], PROMPTS[-1], PROMPTS[2], PROMPTS[1]]
    mixed = make_llm(base, **precision).generate(prompts, PARAMS, use_tqdm=False,
                                                 lora_request=choice)
    for p, lora, out in zip(prompts, choice, mixed):
        alone = make_llm(base, enable_prefix_caching=False, **precision).generate(
            [p], PARAMS, use_tqdm=False, lora_request=lora)[0]
        assert out.outputs[0].token_ids == alone.outputs[0].token_ids
        for a, b in zip(out.outputs[0].logprobs, alone.outputs[0].logprobs):
            assert all(abs(a[t].logprob - b[t].logprob) < MIXED_TOL for t in a.keys() & b.keys())
    assert mixed[0].outputs[0].token_ids != mixed[1].outputs[0].token_ids


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_bfloat16_adapters_beside_a_bfloat16_base(lora_base, lora_adapter, arch):
    """A bfloat16 base keeps its adapters' A and B in bfloat16 too; end to end the output stays
    within the bound other bfloat16 engines keep to float32 (test_llama_engine_options.py):
    the first greedy token equal to PEFT's merged float32 model's, its logprob within 0.01."""
    base, adapter = lora_base(arch), lora_adapter(arch)
    llm = make_llm(base, dtype="bfloat16")
    lora = LoRARequest("a", 1, str(adapter))
    outputs = llm.generate(PROMPTS, PARAMS, use_tqdm=False, lora_request=lora)
    [pair, *_] = llm.engine.runner.adapters.by_id[1].layers[0].values()
    assert pair[0].a.bits.dtype == pair[0].b.bits.dtype == np.uint16
    hf = hf_merged(base, adapter)
    for prompt, out in zip(PROMPTS, outputs):
        token, entry = out.outputs[0].token_ids[0], out.outputs[0].logprobs[0]
        assert token == greedy(hf, prompt)[0]
        assert abs(entry[token].logprob - logprobs_of(hf, prompt)[-1, token]) < BF16_TOL


def test_adapter_blocks_stay_out_of_the_shared_disk_cache(lora_base, lora_adapter, tmp_path):
    """The prefix cache directory outlives the engine and is shared by others, to which an
    adapter id means nothing: an adapter's blocks are never written there, nor read from it."""
    base, prompt = lora_base("gpt2"), PROMPTS[-1]
    lora = LoRARequest("a", 1, str(lora_adapter("gpt2")))
    params = SamplingParams(temperature=0.0, max_tokens=2)
    first = make_llm(base, prefix_cache_dir=str(tmp_path))
    first.generate([prompt], params, use_tqdm=False, lora_request=lora)
    tier = first.engine.block_manager.lower_tier
    tier.store.flush()
    assert tier.stats.writes == 0
    first.generate([prompt], params, use_tqdm=False)
    tier.store.flush()
    assert tier.stats.writes == (len(prompt) - 1) // 4  # the base model's blocks are
    second = make_llm(base, prefix_cache_dir=str(tmp_path))
    adapted = second.generate([prompt], params, use_tqdm=False, lora_request=lora)[0]
    assert adapted.num_cached_tokens == 0
