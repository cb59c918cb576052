"""LLM.beam_search on the Llama family equals transformers' beam search (GPT-2's
test_engine_beam_search.py on tiny grouped-query Llama and Mistral-window checkpoints): token
for token, best first, cum logprobs within 1e-4, with 4-token blocks, a pool that preempts and
chunked prefill. Mistral's window (12) is shorter than the prompts plus the beams."""

from __future__ import annotations

import json
import shutil

import pytest
from beam_checks import RefBeam, assert_same_beams, hf_beams
from engine_checks import random_prompts

from nanovllm import LLM
from nanovllm.values.beam_search_params import BeamSearchParams

PROMPTS = random_prompts(seed=11, count=4, low=10, high=40)
TOKENS = {2: 16, 4: 12}  # new tokens per width
BLOCKS = {2: 22, 4: 30}  # a pool that holds one 40-token prompt's beams, not all of them


def ours(out) -> list[RefBeam]:
    n = len(out.sequences[0].tokens) - len(out.sequences[0].logprobs)
    return [RefBeam(s.tokens[n:], s.cum_logprob, s.score) for s in out.sequences]


@pytest.mark.parametrize("width", sorted(TOKENS))
@pytest.mark.parametrize("variant", ["llama-gqa", "mistral-window"])
def test_beams_match_transformers(llama_ckpt, hf_llama, variant, width):
    model_dir = llama_ckpt(variant)
    llm = LLM(str(model_dir), block_size=4, num_kv_blocks=BLOCKS[width], max_num_batched_tokens=16)
    outputs = llm.beam_search(PROMPTS, BeamSearchParams(width, TOKENS[width]))
    for prompt, out in zip(PROMPTS, outputs):
        ref = hf_beams(hf_llama(model_dir), prompt, width, TOKENS[width])
        assert_same_beams(ours(out), ref, f"{variant}, width {width}, prompt of {len(prompt)}")
    stats = llm.engine.get_stats()
    assert stats.num_preemptions_total > 0, "the pool was meant to force preemption"
    assert stats.num_free_blocks == stats.num_total_blocks, "a beam's block leaked"


def test_every_eos_of_the_generation_config_ends_a_beam(llama_ckpt, tmp_path):
    """generation_config.json lists several EOS ids (Llama 3's): transformers' beam search ends
    a beam on each of them. A token the beams generate often is made the second one."""
    import torch
    from transformers import AutoModelForCausalLM

    model_dir = shutil.copytree(llama_ckpt("llama-gqa"), tmp_path / "ckpt")
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    prompt = PROMPTS[0]
    counts: dict[int, int] = {}
    for b in hf_beams(hf, prompt, 4, 12):
        for t in b.tokens:
            counts[t] = counts.get(t, 0) + 1
    frequent = max(counts, key=counts.get)
    path = model_dir / "generation_config.json"
    config = json.loads(path.read_text())
    eos = [config["eos_token_id"][0], frequent]
    path.write_text(json.dumps({**config, "eos_token_id": eos}))
    llm = LLM(str(model_dir), block_size=4, num_kv_blocks=200)
    out = llm.beam_search([prompt], BeamSearchParams(4, 12))[0]
    ref = hf_beams(hf, prompt, 4, 12, eos_token_id=eos)
    assert_same_beams(ours(out), ref, f"EOS ids {eos}")
    ended = [s for s in out.sequences if s.tokens[-1] == frequent]
    assert ended, "the second EOS was meant to end some beams"
    for s in ended:
        assert s.finish_reason == "stop"
        assert s.text == llm.engine.tokenizer.decode(s.tokens[len(prompt):-1])  # EOS left out
