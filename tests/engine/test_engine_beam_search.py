"""LLM.beam_search through the whole engine equals transformers' beam search.

Prompts of 3..60 tokens, widths 1, 2, 4, 8, 8..32 new tokens, on the tiny checkpoint with
4-token blocks (so beams fork inside partly filled blocks and copy them on write), under
settings that force the hard paths: a pool too small for everyone (whole beam groups preempted
and recomputed), a tiny token budget (chunked prefill), a tiny sequence cap. Beams must equal
`generate(num_beams=k, num_return_sequences=k, do_sample=False)`: token for token, best first,
cum logprobs within 1e-4.
"""

from __future__ import annotations

import pytest
from beam_checks import RefBeam, assert_same_beams, hf_beams
from engine_checks import check_engine_invariants, hf_greedy, random_prompts

from nanovllm import SamplingParams
from nanovllm.step_record import record_step
from nanovllm.values.beam_search_params import BeamSearchParams

PROMPTS = random_prompts(seed=7, count=4, low=3, high=60)
TOKENS = {1: 8, 2: 32, 4: 16, 8: 12}  # new tokens per width: 8..32 in all


def ours(out) -> list[RefBeam]:
    n = len(out.sequences[0].tokens) - len(out.sequences[0].logprobs)
    return [RefBeam(s.tokens[n:], s.cum_logprob, s.score) for s in out.sequences]


@pytest.fixture(scope="module")
def references(hf_tiny) -> dict[int, list[list[RefBeam]]]:
    return {w: [hf_beams(hf_tiny, p, w, t) for p in PROMPTS] for w, t in TOKENS.items()}


@pytest.mark.parametrize("options", [
    dict(num_kv_blocks=400),
    dict(num_kv_blocks=60, max_num_batched_tokens=16),
    dict(num_kv_blocks=400, max_num_seqs=9, enable_prefix_caching=False),
], ids=["roomy", "small-pool-chunked", "seq-cap-no-prefix-cache"])
@pytest.mark.parametrize("width", sorted(TOKENS))
def test_beams_match_transformers(make_llm, references, width, options):
    llm = make_llm(block_size=4, **options)
    outputs = llm.beam_search(PROMPTS, BeamSearchParams(width, TOKENS[width]))
    for prompt, out, ref in zip(PROMPTS, outputs, references[width]):
        assert [s.tokens[:len(prompt)] for s in out.sequences] == [prompt] * width
        assert_same_beams(ours(out), ref, f"width {width}, prompt of {len(prompt)}")
    stats = llm.engine.get_stats()
    assert stats.num_free_blocks == stats.num_total_blocks, "a beam's block leaked"


def test_width_one_is_greedy(make_llm, hf_tiny):
    llm = make_llm(block_size=4)
    beams = llm.beam_search(PROMPTS, BeamSearchParams(1, 12, ignore_eos=True))
    greedy = llm.generate(PROMPTS, SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True),
                          use_tqdm=False)
    for prompt, b, g in zip(PROMPTS, beams, greedy):
        assert b.sequences[0].tokens == prompt + g.outputs[0].token_ids == prompt + hf_greedy(
            hf_tiny, prompt, 12)
        assert b.sequences[0].text == g.outputs[0].text


@pytest.mark.parametrize("length_penalty", [1.0, 0.0, 2.0])
def test_beams_with_eos_in_play(tmp_path_factory, length_penalty):
    """A checkpoint whose EOS is a token the model often generates: beams end early and compete
    by length-penalised score, and the search stops early, on both sides."""
    import torch
    from transformers import GPT2LMHeadModel

    from nanovllm import LLM
    from nanovllm.model import write_dummy_checkpoint
    from tests.conftest import TINY
    eos = 787  # among what the tiny model's beams generate most after PROMPTS_EOS[0]
    ckpt = write_dummy_checkpoint(tmp_path_factory.mktemp("eos"), "gpt2", eos_token_id=eos, **TINY)
    hf = GPT2LMHeadModel.from_pretrained(ckpt, dtype=torch.float32).eval()
    llm = LLM(str(ckpt), num_kv_blocks=200, block_size=4)
    outputs = llm.beam_search(PROMPTS_EOS, BeamSearchParams(4, 12, length_penalty=length_penalty))
    ended = 0
    for prompt, out in zip(PROMPTS_EOS, outputs):
        ref = hf_beams(hf, prompt, 4, 12, length_penalty)
        assert_same_beams(ours(out), ref, f"prompt of {len(prompt)}")
        for s in out.sequences:
            assert s.finish_reason == ("stop" if s.tokens[-1] == eos else "length")
            ended += s.finish_reason == "stop"
    assert ended, "EOS was meant to end some beams"


PROMPTS_EOS = random_prompts(seed=25, count=2, low=3, high=60)


def test_mixed_traffic_keeps_greedy_parity(make_engine, hf_tiny):
    """Beam groups and ordinary requests in one engine, in a pool small enough to preempt."""
    engine = make_engine(block_size=4, num_kv_blocks=48, max_num_batched_tokens=24)
    greedy = SamplingParams(temperature=0.0, max_tokens=10, min_tokens=10)
    for i, p in enumerate(PROMPTS):
        engine.add(engine.processor.process(f"g{i}", p, greedy))
        engine.add(engine.processor.process_beam(f"b{i}", p, BeamSearchParams(4, 10)))
    done = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                done[out.request_id] = out
        check_engine_invariants(engine)
    for i, p in enumerate(PROMPTS):
        assert done[f"g{i}"].outputs[0].token_ids == hf_greedy(hf_tiny, p, 10)
        assert len(done[f"b{i}"].outputs) == 4
    assert engine.get_stats().num_free_blocks == engine.get_stats().num_total_blocks


def test_beams_share_blocks(make_engine):
    """A beam-8 request over a long prompt holds far fewer blocks than 8 sequences would."""
    prompt = random_prompts(seed=3, count=1, low=200, high=200)[0]
    engine = make_engine(block_size=16, num_kv_blocks=400)
    engine.add(engine.processor.process_beam("b", prompt, BeamSearchParams(8, 16)))
    peak = 0
    while engine.has_unfinished_requests():
        engine.step()
        check_engine_invariants(engine)
        peak = max(peak, engine.block_manager.num_blocks - engine.block_manager.num_free_blocks)
    independent = 8 * -(-(200 + 16) // 16)
    assert peak < independent / 3, (peak, independent)
    assert engine.block_manager.num_copies_total > 0


def test_abort_frees_the_whole_group(make_engine):
    engine = make_engine(block_size=4)
    engine.add(engine.processor.process_beam("b", PROMPTS[1], BeamSearchParams(8, 30)))
    for _ in range(5):
        engine.step()
    assert len(engine.scheduler.running) == 8
    engine.abort_request("b")
    engine.step()
    stats = engine.get_stats()
    assert stats.num_free_blocks == stats.num_total_blocks and not engine.scheduler.running


def test_the_engine_view_sees_beams_share_and_copy_blocks(make_engine):
    """The snapshot marks the blocks beams share and their copies; the step record lists each
    step's copies; the step history counts beams like any sequence (one decode each)."""
    engine = make_engine(block_size=4)
    engine.add(engine.processor.process_beam("b", PROMPTS[1], BeamSearchParams(4, 12,
                                                                             ignore_eos=True)))
    seen_beams = seen_copied = recorded_copies = 0
    while engine.has_unfinished_requests():
        made = engine.block_manager.num_copies_total
        _, record = record_step(engine)
        pool, tables = engine.snapshot().blocks, [s.block_table for s in engine.scheduler.running]
        for block_id, (beams, refs) in enumerate(zip(pool.beams, pool.ref_count)):
            holders = sum(block_id in t for t in tables)
            assert beams == (holders > 1) and refs >= holders
        seen_beams += sum(pool.beams)
        seen_copied += sum(pool.copied)
        copies = record.blocks.copied
        recorded_copies += len(copies)
        assert len(copies) == engine.block_manager.num_copies_total - made
    assert seen_beams and seen_copied and recorded_copies
    steps = engine.snapshot().steps
    assert [s.num_seqs for s in steps] == [1] + [4] * 11
    assert [s.num_decode_tokens for s in steps] == [0] + [4] * 11
    assert engine.stats.generation_tokens_total == 1 + 4 * 11
