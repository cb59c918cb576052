"""What callers see: LLM.generate's order and shape, streamed text, and abort_request.

Streaming: across engine.step() outputs each CompletionOutput's text and token ids only grow
(each is a prefix of the next and of the final one, so text that turns out to start a stop
string is never shown early), running text never shows a stop string, and the final text is
tokenizer.decode of the output ids, trimmed at the stop string. Sampling the random tiny model
at temperature 1 emits many byte tokens that split UTF-8 characters, so this exercises the
incremental detokenizer's hold-back; a property test drives the detokenizer on byte tokens.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from engine_checks import check_engine_invariants, random_prompts, run_engine
from hypothesis import example, given, settings
from hypothesis import strategies as st

from nanovllm import SamplingParams
from nanovllm.tokenizer import IncrementalDetokenizer, Tokenizer


# ---- LLM.generate ---------------------------------------------------------------------------
def test_generate_keeps_input_order_for_mixed_prompts(make_llm):
    llm = make_llm(max_num_seqs=2)
    prompts = ["Hello, my name is", [5, 6, 7, 8], "The capital of France is", [900] * 40,
               "x", [1]]
    # Early prompts ask for more tokens, so they finish last.
    params = [SamplingParams(seed=i, max_tokens=12 - 2 * i, ignore_eos=True)
              for i in range(len(prompts))]
    outputs = llm.generate(prompts, params, use_tqdm=False)
    tok = llm.engine.tokenizer
    for i, (prompt, out) in enumerate(zip(prompts, outputs)):
        assert out.request_id == str(i) and out.finished
        if isinstance(prompt, str):
            assert out.prompt == prompt and out.prompt_token_ids == tok.encode(prompt)
        else:
            assert out.prompt is None and out.prompt_token_ids == prompt
        assert len(out.outputs[0].token_ids) == 12 - 2 * i


def test_generate_accepts_single_prompts_and_default_params(make_llm):
    llm = make_llm()
    [text_out] = llm.generate("Once upon a time", use_tqdm=False)
    [ids_out] = llm.generate([3, 4, 5], use_tqdm=False)
    assert text_out.prompt == "Once upon a time" and ids_out.prompt_token_ids == [3, 4, 5]
    assert len(text_out.outputs[0].token_ids) <= 16                 # vLLM's default max_tokens
    assert llm.generate([], use_tqdm=False) == []


def test_generate_returns_n_completions_per_prompt(make_llm):
    outs = make_llm().generate([[1, 2], "hi"], SamplingParams(n=3, max_tokens=4, ignore_eos=True),
                               use_tqdm=False)
    for out in outs:
        assert [c.index for c in out.outputs] == [0, 1, 2]
        assert all(len(c.token_ids) == 4 and c.finish_reason == "length" for c in out.outputs)


def test_generate_accepts_vllm_prompt_dicts_alone_and_in_lists(make_llm):
    """{"prompt": text} and {"prompt_token_ids": ids} give what the bare forms give."""
    llm = make_llm()
    greedy = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    text, ids = "Once upon a time", [3, 4, 5]
    bare = llm.generate([text, ids], greedy, use_tqdm=False)
    [one] = llm.generate({"prompt_token_ids": ids}, greedy, use_tqdm=False)
    dicts = llm.generate([{"prompt": text}, {"prompt_token_ids": ids}], greedy, use_tqdm=False)
    assert one.prompt_token_ids == ids and one.prompt is None
    assert dicts[0].prompt == text
    assert [o.outputs[0].token_ids for o in dicts] == [o.outputs[0].token_ids for o in bare]
    assert one.outputs[0].token_ids == bare[1].outputs[0].token_ids
    [arr] = llm.generate({"prompt_token_ids": np.array(ids, np.int32)}, greedy, use_tqdm=False)
    assert arr.prompt_token_ids == ids and arr.outputs[0].token_ids == one.outputs[0].token_ids


@pytest.mark.parametrize("prompt", [{"text": "hi"}, {"prompt": "hi", "prompt_token_ids": [1]},
                                    {"prompt": [1, 2]}, {"prompt_token_ids": "hi"}, {},
                                    {"prompt_token_ids": 5}, {"prompt_token_ids": b"ab"},
                                    {"prompt_token_ids": {1, 2}}, {"prompt": 5}])
def test_generate_rejects_malformed_prompt_dicts_by_naming_the_keys(make_llm, prompt):
    llm = make_llm()
    with pytest.raises(ValueError, match="'prompt' \\(text\\) or 'prompt_token_ids'"):
        llm.generate([[1, 2], prompt], use_tqdm=False)
    assert llm.engine.get_stats().num_waiting == 0  # the valid prompt was withdrawn too


def test_generate_recovers_from_an_invalid_prompt(make_llm):
    """The prompts added before a rejected one are withdrawn: the next call works."""
    llm = make_llm()
    with pytest.raises(ValueError, match="empty"):
        llm.generate([[1, 2], []], SamplingParams(max_tokens=2), use_tqdm=False)
    [out] = llm.generate([[3, 4]], SamplingParams(max_tokens=2), use_tqdm=False)
    assert out.finished and llm.engine.get_stats().num_waiting == 0


# ---- streaming ------------------------------------------------------------------------------
STOPS = [None, ["e"], [" t", "in"], ["the"], ["\n"], ["\ufffd"], ["     "]]


def streaming_params(i: int) -> SamplingParams:
    return SamplingParams(seed=i, max_tokens=30, stop=STOPS[i % len(STOPS)],
                          include_stop_str_in_output=i % 4 == 1, n=1 + (i % 5 == 0))


def check_final_text(completion, params, tok) -> None:
    full = tok.decode(completion.token_ids)
    stop = completion.stop_reason
    if isinstance(stop, str):
        if params.include_stop_str_in_output:
            assert completion.text.endswith(stop) and full.startswith(completion.text)
            assert stop not in completion.text[:-len(stop)]
        else:
            assert full.startswith(completion.text + stop) and stop not in completion.text
    elif completion.finish_reason == "stop":      # EOS: its text is not part of the output
        assert completion.text == tok.decode(completion.token_ids[:-1])
    else:
        assert completion.text == full


def test_streamed_text_only_grows_and_ends_as_the_decoded_ids(make_engine):
    engine = make_engine(block_size=4, num_kv_blocks=60, max_num_batched_tokens=32)
    prompts = random_prompts(seed=21, count=30, low=1, high=20, vocab=1024)
    params = [streaming_params(i) for i in range(len(prompts))]
    for i, (p, sp) in enumerate(zip(prompts, params)):
        engine.add_request(str(i), p, sp)
    history = run_engine(engine)
    tok, non_ascii = engine.tokenizer, 0
    for rid, outs in history.items():
        sp = params[int(rid)]
        for index in range(sp.n):
            stream = [o.outputs[index] for o in outs]
            final = stream[-1]
            assert final.finish_reason is not None
            for earlier, later in zip(stream, stream[1:]):
                assert later.text.startswith(earlier.text)
                assert later.token_ids[:len(earlier.token_ids)] == earlier.token_ids
            # Running text never shows a stop string; that it never showed the start of the
            # one that ended it follows from being a prefix of the trimmed final text.
            for c in stream:
                assert c.text == final.text[:len(c.text)]
                assert c.finish_reason is not None or not any(s in c.text for s in sp.stop)
            check_final_text(final, sp, tok)
            non_ascii += not final.text.isascii()
    assert non_ascii >= 5, "the test should see multi-byte and broken characters"
    assert sum(o[-1].outputs[0].finish_reason == "stop" for o in history.values()) >= 5


def test_final_only_requests_are_output_once_and_alike(make_engine):
    """add_request(final_only=True) (LLM.generate's way) skips the running outputs; the
    final one is what a cumulative request of the same seed ends with."""
    engine = make_engine()
    for i in range(2):
        params = SamplingParams(n=2, seed=5, max_tokens=6, ignore_eos=True)
        engine.add_request(f"final-{i}", [5, 6, 7], params, final_only=True)
        engine.add_request(f"every-{i}", [5, 6, 7], params)
    history = run_engine(engine)
    for i in range(2):
        [final] = history[f"final-{i}"]
        assert final.finished and len(history[f"every-{i}"]) > 1
        assert final.outputs == history[f"every-{i}"][-1].outputs


def gpt2_byte_token(tok, byte: int) -> int:
    """The tiny vocabulary's token for one raw byte (GPT-2's byte-to-unicode alphabet)."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    char = chr(byte) if byte in printable else chr(256 + [b for b in range(256)
                                                          if b not in printable].index(byte))
    return tok._tok.token_to_id(char)


@functools.cache
def tiny_tokenizer(path: str) -> Tokenizer:
    return Tokenizer(path, eos_token_id=1023)


BYTES = [0x61, 0x20, 0xC3, 0xA9, 0xE4, 0xB8, 0x80, 0xF0, 0x9F, 0x98, 0xFF]


@settings(max_examples=300, deadline=None)
@given(seq=st.lists(st.sampled_from(BYTES) | st.integers(256, 1000), min_size=1, max_size=14))
@example(seq=[0xF0, 0x9F, 0x98, 0xF0, 0x9F, 0x98, 0x80, 0x61])
def test_incremental_detokenizer_matches_full_decode(tiny_ckpt, seq):
    tok = tiny_tokenizer(str(tiny_ckpt))
    ids = [gpt2_byte_token(tok, t) if t < 256 else t for t in seq]
    detok, text = IncrementalDetokenizer(tok), ""
    full = tok.decode(ids)
    for i, token in enumerate(ids):
        text += detok.step(token)
        assert full.startswith(text), (ids[:i + 1], text)
    text += detok.flush()
    assert text == full


# ---- abort ----------------------------------------------------------------------------------
def busy_engine(make_engine):
    engine = make_engine(block_size=4, num_kv_blocks=48, max_num_batched_tokens=24, max_num_seqs=6)
    prompts = random_prompts(seed=31, count=10, low=5, high=60)
    for i, p in enumerate(prompts):
        engine.add_request(str(i), p, SamplingParams(n=1 + i % 2, seed=i, max_tokens=40,
                                                     ignore_eos=True))
    return engine, prompts


def test_abort_everything_frees_every_block_at_once(make_engine):
    engine, prompts = busy_engine(make_engine)
    for _ in range(6):
        engine.step()
    stats = engine.get_stats()
    assert stats.num_running > 0 and stats.num_free_blocks < stats.num_total_blocks
    engine.abort_request([str(i) for i in range(len(prompts))])
    stats = engine.get_stats()
    assert stats.num_free_blocks == stats.num_total_blocks and stats.kv_cache_usage == 0.0
    assert (stats.num_running, stats.num_waiting, stats.num_aborted_total) == (0, 0, 10)
    assert not engine.has_unfinished_requests() and engine.step() == []
    check_engine_invariants(engine)
    # The pool still works, and gives what a fresh engine gives.
    greedy = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)
    engine.add_request("again", prompts[3], greedy)
    fresh = make_engine()
    fresh.add_request("again", prompts[3], greedy)
    assert run_engine(engine)["again"][-1].outputs == run_engine(fresh)["again"][-1].outputs


def test_abort_one_request_frees_its_blocks_and_spares_the_others(make_engine):
    engine, prompts = busy_engine(make_engine)
    reference, _ = busy_engine(make_engine)
    for _ in range(8):
        engine.step()
        reference.step()
    victim = next(r for r in engine.requests.values() if any(s.block_table for s in r.seqs))
    own = {b for s in victim.seqs for b in s.block_table
           if engine.block_manager.blocks[b].ref_count == sum(b in t.block_table for t in victim.seqs)}
    free_before = engine.get_stats().num_free_blocks
    engine.abort_request(victim.request_id)
    assert engine.get_stats().num_free_blocks == free_before + len(own)
    check_engine_invariants(engine)
    ours, theirs = run_engine(engine), run_engine(reference)
    assert victim.request_id not in ours
    for rid, outs in ours.items():
        assert outs[-1].outputs == theirs[rid][-1].outputs, rid


def test_abort_unknown_or_finished_ids_is_harmless(make_engine):
    engine = make_engine()
    engine.add_request("done", [1, 2], SamplingParams(max_tokens=2))
    run_engine(engine)
    engine.abort_request(["done", "never-existed"])
    engine.abort_request("nope")
    assert engine.get_stats().num_aborted_total == 0
