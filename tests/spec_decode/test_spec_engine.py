"""Speculative decoding in the engine: greedy output token for token what it is without
speculation (every sampling feature), the target's distribution when sampling, nothing left
behind (blocks free, the prefix cache clean), and start-up errors naming the key."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_spec_pieces import assert_distribution

from nanovllm import LLM, EngineConfig, LLMEngine, SamplingParams
from nanovllm.model import write_dummy_checkpoint

# These tests are about verification at any batch size: speculation never switches off here,
# and every decode proposes k (test_spec_adaptive.py has the rule choosing k).
NGRAM = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 3,
         "prompt_lookup_min": 1, "disable_by_batch_size": None, "adaptive": False}
REPEATS = [[1, 2, 3, 4, 5, 1, 2, 3, 4, 5, 1, 2, 3], [7, 8, 9, 7, 8, 9, 7, 8], [40, 41, 42, 43]]


def draft_config(ckpt, **extra) -> dict:
    return {"model": str(ckpt), "num_speculative_tokens": 3, "disable_by_batch_size": None,
            "adaptive": False, **extra}


def outputs(llm: LLM, prompts, params):
    """Tokens, text and finish of every sample, and its logprobs (float32 rounding apart: a
    longer verify run than `MAX_DECODE_RUN` rows goes through the chunk attention path, a plain
    decode through the decode kernel)."""
    return [[(c.token_ids, c.text, c.finish_reason, c.stop_reason,
              [{t: Approx(lp.logprob) for t, lp in d.items()} for d in c.logprobs or []])
             for c in out.outputs] for out in llm.generate(prompts, params, use_tqdm=False)]


class Approx(float):
    def __eq__(self, other):
        return abs(float(self) - float(other)) < 1e-4

    __hash__ = float.__hash__


GREEDY_CASES = {
    "plain": SamplingParams(temperature=0, max_tokens=30, ignore_eos=True, logprobs=2),
    "n=2": SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, n=2),
    "penalties": SamplingParams(temperature=0, max_tokens=30, ignore_eos=True,
                                repetition_penalty=1.3, presence_penalty=0.5,
                                frequency_penalty=0.4),
    "bias+min_tokens": SamplingParams(temperature=0, max_tokens=25, min_tokens=20,
                                      logit_bias={3: 5.0, 8: 4.0}, stop_token_ids=[4, 9]),
    "stop": SamplingParams(temperature=0, max_tokens=30, stop=["e", " a"]),
    "max_tokens=3": SamplingParams(temperature=0, max_tokens=3, ignore_eos=True),
}


@pytest.mark.parametrize("case", GREEDY_CASES)
@pytest.mark.parametrize("method", ["ngram", "draft"])
def test_greedy_output_is_unchanged(make_llm, tiny_ckpt, case, method):
    """A draft identical to the target has every greedy proposal accepted; n-gram lookup on
    repetitive prompts has many accepted and some rejected: both give exactly the output of
    decoding one token at a time."""
    params = GREEDY_CASES[case]
    spec = NGRAM if method == "ngram" else draft_config(tiny_ckpt)
    llm = make_llm(speculative_config=spec)
    assert outputs(llm, REPEATS, params) == outputs(make_llm(), REPEATS, params)
    stats = llm.engine.spec_stats
    assert stats.num_drafts > 0
    if method == "draft" and case == "plain":
        assert stats.num_accepted_tokens == stats.num_draft_tokens
    assert llm.engine.block_manager.num_free_blocks == llm.engine.num_kv_blocks


def test_structured_requests_do_not_speculate(make_llm):
    """Structured outputs do not speculate (their grammar would have to walk and roll back every
    proposal); the others in the same batch do."""
    from nanovllm.structured import GrammarCompiler
    llm = make_llm(speculative_config=NGRAM)
    grammar = GrammarCompiler(llm.engine.tokenizer).compile("regex", "[0-9]{6}", "guided_regex")
    llm.generate(REPEATS, SamplingParams(temperature=0, max_tokens=8, structured=grammar),
                 use_tqdm=False)
    assert llm.engine.spec_stats.num_drafts == 0


def test_switches_off_from_the_batch_size_on(make_llm):
    llm = make_llm(speculative_config={**NGRAM, "disable_by_batch_size": 3})
    params = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
    llm.generate(REPEATS, params, use_tqdm=False)  # three sequences: never speculates
    assert llm.engine.spec_stats.num_drafts == 0
    llm.generate(REPEATS[:2], params, use_tqdm=False)
    assert llm.engine.spec_stats.num_drafts > 0


def test_steps_report_proposed_and_accepted(make_engine):
    engine = make_engine(speculative_config=NGRAM)
    engine.add_request("a", REPEATS[0], SamplingParams(temperature=0, max_tokens=20, ignore_eos=True))
    seen = []
    while engine.has_unfinished_requests():
        engine.step()
        seen.append((engine.last_step.num_proposed, engine.last_step.num_accepted))
    assert sum(p for p, _ in seen) == engine.spec_stats.num_draft_tokens > 0
    assert sum(a for _, a in seen) == engine.spec_stats.num_accepted_tokens
    assert all(0 <= a <= p for p, a in seen)


def test_rejected_tokens_never_reach_the_prefix_cache(make_engine):
    """Every published block holds exactly the tokens of the sequence that computed it."""
    engine = make_engine(speculative_config=NGRAM, block_size=4)
    engine.add_request("a", REPEATS[0] * 2, SamplingParams(temperature=0, max_tokens=40,
                                                           ignore_eos=True))
    seqs = engine.requests["a"].seqs
    while engine.has_unfinished_requests():
        engine.step()
        for seq in seqs:
            for i, block_id in enumerate(seq.block_table[:seq.num_hashed_blocks]):
                block = engine.block_manager.blocks[block_id]
                assert block.token_ids == tuple(seq.token_ids[i * 4:(i + 1) * 4])
            assert seq.num_computed_tokens <= seq.num_tokens
    assert engine.spec_stats.num_draft_tokens > engine.spec_stats.num_accepted_tokens > 0


# ---- sampling: the target's distribution ---------------------------------------------------------
@pytest.fixture(scope="module")
def small_vocab(tmp_path_factory):
    """A target and a different draft over the smallest byte-level vocabulary (257 tokens)."""
    shape = dict(n_layer=1, n_embd=32, n_head=2, vocab_size=257, n_positions=64)
    root = tmp_path_factory.mktemp("small")
    target = write_dummy_checkpoint(root / "target", "gpt2", seed=1, **shape)
    draft = write_dummy_checkpoint(root / "draft", "gpt2", seed=2, **shape)
    return target, draft


TEMPERATURE = 0.3  # random weights give flat distributions: sharpen them


def _samples(engine: LLMEngine, prompt, count) -> np.ndarray:
    """[count, 3]: the tokens of `count` seeded samples of 3 tokens. The first comes from the
    prompt's step; the second is a verified proposal or a residual draw; the third the target's
    bonus token or, after a rejection, the next step's."""
    for i in range(count):
        engine.add_request(str(i), prompt, SamplingParams(temperature=TEMPERATURE, max_tokens=3,
                                                          ignore_eos=True, seed=i))
    out = {}
    while engine.has_unfinished_requests():
        for o in engine.step():
            if o.finished:
                out[o.request_id] = o.outputs[0].token_ids
    return np.array([out[str(i)] for i in range(count)])


def test_sampling_keeps_the_target_distribution(small_vocab):
    """Chi-square: with a (different) draft model proposing, the second generated token (a
    verified proposal or a residual draw) is distributed as the target's (computed exactly by
    the reference forward pass, over every first token)."""
    target, draft = small_vocab
    from nanovllm.model.architectures import gpt2_reference
    from nanovllm.model.checkpoint.loader import load_gpt2
    cfg, weights = load_gpt2(target)

    def probs(tokens):
        logits = gpt2_reference.forward(weights, cfg, np.array(tokens))[-1] / TEMPERATURE
        p = np.exp(logits - logits.max())
        return p / p.sum()

    prompt = [3, 1, 4, 1, 5]
    engine = LLMEngine(EngineConfig(str(target), num_kv_blocks=1024, max_num_seqs=8,
                                    speculative_config=draft_config(draft, num_speculative_tokens=2)))
    samples = _samples(engine, prompt, 4000)
    stats = engine.spec_stats
    assert 0 < stats.num_accepted_tokens < stats.num_draft_tokens
    first = probs(prompt)
    assert_distribution(samples[:, 0], first)
    # The second token (a kept proposal or a residual draw), over every first token.
    second = sum(first[f] * probs(prompt + [f]) for f in range(len(first)))
    assert_distribution(samples[:, 1], second)


def test_seeded_sampling_is_reproducible(make_llm, tiny_ckpt):
    params = SamplingParams(temperature=1.0, max_tokens=20, ignore_eos=True, seed=7, n=2)
    runs = [outputs(make_llm(speculative_config=spec), REPEATS[:1], params)
            for spec in (NGRAM, NGRAM, draft_config(tiny_ckpt), draft_config(tiny_ckpt))]
    assert runs[0] == runs[1] and runs[2] == runs[3]


# ---- mixed traffic under pressure ---------------------------------------------------------------
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.tuples(st.lists(st.integers(1, 12), min_size=1, max_size=20),
                          st.integers(1, 16), st.booleans(), st.sampled_from([1, 2])),
                min_size=1, max_size=6),
       st.sampled_from(["ngram", "draft"]))
def test_mixed_speculative_traffic_leaves_all_blocks_free(tiny_ckpt, requests, method):
    """Greedy and sampled, n = 1 and 2, in a small pool (preemption mid-speculation): greedy
    outputs equal those of an engine without speculation, and every block ends free."""
    spec = NGRAM if method == "ngram" else draft_config(tiny_ckpt)
    small = dict(num_kv_blocks=14, block_size=4, max_num_batched_tokens=24, max_num_seqs=4)
    on = LLMEngine(EngineConfig(str(tiny_ckpt), speculative_config=spec, **small))
    off = LLMEngine(EngineConfig(str(tiny_ckpt), num_kv_blocks=256))
    results = {}
    for engine in (on, off):
        for i, (prompt, max_tokens, greedy, n) in enumerate(requests):
            params = SamplingParams(temperature=0 if greedy else 1.0, max_tokens=max_tokens,
                                    ignore_eos=True, n=n, seed=i)
            engine.add_request(str(i), prompt * 2, params)
        done = {}
        while engine.has_unfinished_requests():
            for out in engine.step():
                if out.finished:
                    done[out.request_id] = [c.token_ids for c in out.outputs]
        results[engine is on] = done
        assert engine.block_manager.num_free_blocks == engine.num_kv_blocks
    for i, (_, max_tokens, greedy, _) in enumerate(requests):
        if greedy:
            assert results[True][str(i)] == results[False][str(i)]
        assert all(len(t) == max_tokens for t in results[True][str(i)])


# ---- start-up errors ----------------------------------------------------------------------------
def test_start_up_errors_name_the_key(tiny_ckpt, tmp_path):
    with pytest.raises(ValueError, match="speculative_config.model"):
        EngineConfig(str(tiny_ckpt), speculative_config={"num_speculative_tokens": 2,
                                                         "model": str(tmp_path / "none")})
        LLMEngine(EngineConfig(str(tiny_ckpt), num_kv_blocks=8, speculative_config={
            "num_speculative_tokens": 2, "model": str(tmp_path / "none")}))
    other = write_dummy_checkpoint(tmp_path / "other", "gpt2", n_layer=1, n_embd=32, n_head=2,
                                   vocab_size=512, n_positions=256)
    with pytest.raises(ValueError, match="speculative_config.model.*vocabulary"):
        LLMEngine(EngineConfig(str(tiny_ckpt), num_kv_blocks=8,
                               speculative_config=draft_config(other)))
    short = write_dummy_checkpoint(tmp_path / "short", "gpt2", n_layer=1, n_embd=32, n_head=2,
                                   vocab_size=1024, n_positions=64)
    with pytest.raises(ValueError, match="speculative_config.model.*context"):
        LLMEngine(EngineConfig(str(tiny_ckpt), num_kv_blocks=8,
                               speculative_config=draft_config(short)))
    with pytest.raises(ValueError, match="num_speculative_tokens"):
        EngineConfig(str(tiny_ckpt), speculative_config=json.dumps({"num_speculative_tokens": 99}))


# ---- the shared code models: acceptance on real predictions ------------------------------------
# ../shared/models beside the checkout (a worktree of it sits one level deeper).
MODELS = next((p / "shared" / "models" for p in Path(__file__).resolve().parents[2:5]
               if (p / "shared" / "models").is_dir()), Path("/nonexistent"))


@pytest.mark.skipif(not (MODELS / "code-6l").is_dir() or not (MODELS / "code-2l").is_dir(),
                    reason="../shared/models/code-6l and code-2l are absent")
@pytest.mark.parametrize("spec", [NGRAM, {"model": str(MODELS / "code-2l"),
                                          "num_speculative_tokens": 4, "adaptive": False}])
def test_code_models_accept_and_match(spec):
    code = "def add(a, b):\n    return a + b\n\n\ndef add(a, b):\n    return a + b\n\n\ndef"
    params = SamplingParams(temperature=0, max_tokens=48, ignore_eos=True)
    base = LLM(str(MODELS / "code-6l"), num_kv_blocks=256)
    llm = LLM(str(MODELS / "code-6l"), num_kv_blocks=256, speculative_config=spec)
    assert outputs(llm, [code], params) == outputs(base, [code], params)
    stats = llm.engine.spec_stats
    assert stats.num_accepted_tokens > 0
