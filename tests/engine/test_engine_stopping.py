"""Every way a request ends, with vLLM's finish_reason, stop_reason and text.

EOS is forced with logit_bias={eos: 100}. Stop tokens and stop strings are taken from what
greedy decoding of the tiny model really produces (found once per module), so the expected
result of each rerun with a stop condition is known exactly.
"""

from __future__ import annotations

import pytest
from engine_checks import random_prompts

from nanovllm import LLM, SamplingParams

EOS = 1023
N = 24


@pytest.fixture(scope="module")
def llm(tiny_ckpt) -> LLM:
    return LLM(str(tiny_ckpt), num_kv_blocks=256)


@pytest.fixture(scope="module")
def greedy_runs(llm) -> list[tuple[list[int], list[int], str]]:
    """(prompt, greedy output ids, text) for 40 random prompts, max_tokens=N, no stops."""
    prompts = random_prompts(seed=0, count=40, low=8, high=8)
    outs = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=N, ignore_eos=True),
                        use_tqdm=False)
    return [(p, o.outputs[0].token_ids, o.outputs[0].text) for p, o in zip(prompts, outs)]


def find_run(greedy_runs, predicate):
    for run in greedy_runs:
        if predicate(*run):
            return run
    pytest.fail("no greedy run of the tiny model has the wanted shape")


def run_one(llm, prompt, **params):
    return llm.generate([prompt], SamplingParams(temperature=0.0, **params),
                        use_tqdm=False)[0].outputs[0]


def varied_ascii(ids, text) -> bool:
    return text.isascii() and text.isprintable() and ids[0] != ids[-1]


# ---- EOS, ignore_eos, max_tokens, context length -------------------------------------------
def test_eos_stops_with_reason_stop(llm):
    out = run_one(llm, [1, 2, 3], logit_bias={EOS: 100.0}, max_tokens=10)
    assert out.token_ids == [EOS]
    assert (out.finish_reason, out.stop_reason, out.text) == ("stop", None, "")


def test_eos_stops_sampled_requests_too(llm):
    out = llm.generate([[1, 2, 3]], SamplingParams(seed=0, logit_bias={EOS: 100.0}),
                       use_tqdm=False)[0].outputs[0]
    assert out.token_ids == [EOS] and out.finish_reason == "stop"


def test_ignore_eos_runs_to_max_tokens(llm):
    out = run_one(llm, [1, 2, 3], logit_bias={EOS: 100.0}, ignore_eos=True, max_tokens=5)
    assert out.token_ids == [EOS] * 5
    assert (out.finish_reason, out.stop_reason) == ("length", None)


def test_eos_text_shows_only_without_skip_special_tokens(llm):
    params = dict(logit_bias={EOS: 100.0}, ignore_eos=True, max_tokens=3)
    assert run_one(llm, [1, 2, 3], **params).text == ""
    shown = run_one(llm, [1, 2, 3], skip_special_tokens=False, **params).text
    assert shown == llm.engine.tokenizer.decode_token(EOS) * 3 and shown


def test_min_tokens_delays_eos(llm):
    out = run_one(llm, [1, 2, 3], logit_bias={EOS: 100.0}, min_tokens=4, max_tokens=10)
    assert len(out.token_ids) == 5 and EOS not in out.token_ids[:4] and out.token_ids[4] == EOS
    assert out.finish_reason == "stop"


def test_max_tokens_ends_with_length(llm, greedy_runs):
    prompt, ids, text = greedy_runs[0]
    out = run_one(llm, prompt, max_tokens=7, ignore_eos=True)
    assert out.token_ids == ids[:7]
    assert (out.finish_reason, out.stop_reason) == ("length", None)


@pytest.mark.parametrize("max_model_len, prompt_len", [(None, 250), (64, 60), (64, 63)])
def test_context_length_ends_with_length(tiny_ckpt, max_model_len, prompt_len):
    llm = LLM(str(tiny_ckpt), num_kv_blocks=256, max_model_len=max_model_len)
    prompt = random_prompts(seed=1, count=1, low=prompt_len, high=prompt_len)[0]
    out = run_one(llm, prompt, max_tokens=None, ignore_eos=True)
    assert len(prompt) + len(out.token_ids) == (max_model_len or 256)
    assert out.finish_reason == "length"


def test_min_tokens_never_pushes_past_the_context(tiny_ckpt):
    """A min_tokens that cannot fit after the prompt is refused up front, naming min_tokens."""
    llm = LLM(str(tiny_ckpt), num_kv_blocks=256)
    prompt = random_prompts(seed=1, count=1, low=250, high=250)[0]
    params = SamplingParams(temperature=0.0, max_tokens=None, min_tokens=10, ignore_eos=True)
    with pytest.raises(ValueError, match="min_tokens") as err:
        llm.engine.add_request("x", prompt, params)
    assert err.value.param == "min_tokens" and not llm.engine.has_unfinished_requests()


def test_min_tokens_up_to_the_context_ends_there(tiny_ckpt):
    llm = LLM(str(tiny_ckpt), num_kv_blocks=256)
    prompt = random_prompts(seed=1, count=1, low=250, high=250)[0]
    params = SamplingParams(temperature=0.0, max_tokens=None, min_tokens=6, ignore_eos=True)
    out = llm.generate([prompt], params, use_tqdm=False)[0].outputs[0]
    assert len(out.token_ids) == 6 and out.finish_reason == "length"


# ---- stop token ids ------------------------------------------------------------------------
def test_stop_token_id_ends_with_that_id(llm, greedy_runs):
    prompt, ids, text = find_run(greedy_runs, lambda p, ids, t: ids[0] != ids[-1])
    stop = ids[-1]
    k = ids.index(stop)
    out = run_one(llm, prompt, stop_token_ids=[stop], max_tokens=N)
    assert out.token_ids == ids[:k + 1]
    assert (out.finish_reason, out.stop_reason) == ("stop", stop)
    assert out.text == llm.engine.tokenizer.decode(ids[:k])       # its text is left out
    kept = run_one(llm, prompt, stop_token_ids=[stop], max_tokens=N, include_stop_str_in_output=True)
    assert kept.token_ids == ids[:k + 1]
    assert kept.text == llm.engine.tokenizer.decode(ids[:k + 1])


def test_min_tokens_delays_stop_token_ids(llm, greedy_runs):
    prompt, ids, _ = greedy_runs[0]
    out = run_one(llm, prompt, stop_token_ids=[ids[0]], min_tokens=3, max_tokens=N)
    assert ids[0] not in out.token_ids[:3]
    assert len(out.token_ids) >= 4 or out.finish_reason == "length"


def test_eos_in_stop_token_ids_reports_eos_as_plain_stop(llm):
    out = run_one(llm, [1, 2, 3], logit_bias={EOS: 100.0}, stop_token_ids=[EOS])
    assert out.token_ids == [EOS] and out.finish_reason == "stop"


# ---- stop strings --------------------------------------------------------------------------
def stop_string_case(greedy_runs):
    """A prompt, its greedy text, and a 3-character stop string from the middle of that text."""
    prompt, ids, text = find_run(greedy_runs, lambda p, ids, t: varied_ascii(ids, t) and len(t) > 12)
    middle = len(text) // 2
    return prompt, ids, text, text[middle:middle + 3]


def test_stop_string_trims_the_text_before_it(llm, greedy_runs):
    prompt, ids, text, stop = stop_string_case(greedy_runs)
    out = run_one(llm, prompt, stop=stop, max_tokens=N)
    assert out.text == text[:text.index(stop)]
    assert (out.finish_reason, out.stop_reason) == ("stop", stop)
    # It stopped at the first token whose text completes the stop string.
    assert out.token_ids == ids[:len(out.token_ids)]
    tok = llm.engine.tokenizer
    assert stop in tok.decode(out.token_ids) and stop not in tok.decode(out.token_ids[:-1])


def test_include_stop_str_in_output_keeps_it(llm, greedy_runs):
    prompt, ids, text, stop = stop_string_case(greedy_runs)
    out = run_one(llm, prompt, stop=stop, max_tokens=N, include_stop_str_in_output=True)
    assert out.text == text[:text.index(stop) + len(stop)]
    assert (out.finish_reason, out.stop_reason) == ("stop", stop)


def test_earliest_of_several_stop_strings_wins(llm, greedy_runs):
    prompt, ids, text, stop = stop_string_case(greedy_runs)
    first = text.index(stop)
    later = next(text[first + 1:first + 1 + n] for n in range(2, 12)
                 if text.index(text[first + 1:first + 1 + n]) > first)
    out = run_one(llm, prompt, stop=[later, stop, "never seen"], max_tokens=N)
    assert (out.text, out.stop_reason) == (text[:text.index(stop)], stop)


def test_stop_string_not_produced_runs_to_length(llm, greedy_runs):
    prompt, ids, text = greedy_runs[0]
    out = run_one(llm, prompt, stop=["\x00never\x00"], max_tokens=N, ignore_eos=True)
    assert (out.text, out.finish_reason, out.stop_reason) == (text, "length", None)


def constant_run(greedy_runs):
    """A greedy run that repeats one ASCII token: its text is the stop string, once per token."""
    prompt, ids, text = find_run(greedy_runs, lambda p, ids, t: len(set(ids)) == 1 and t.isascii()
                                 and t.strip())
    return prompt, ids, text[:len(text) // N]


def test_min_tokens_delays_stop_strings(llm, greedy_runs):
    prompt, ids, piece = constant_run(greedy_runs)
    assert run_one(llm, prompt, stop=piece, max_tokens=N).text == ""
    for m in (2, 3, 5):
        out = run_one(llm, prompt, stop=piece, min_tokens=m, max_tokens=N)
        assert len(out.token_ids) == m and out.finish_reason == "stop"


@pytest.mark.parametrize("extra_stops", [[], ["a much longer stop string"]])
def test_min_tokens_stop_string_ends_in_new_text(llm, greedy_runs, extra_stops):
    prompt, ids, piece = constant_run(greedy_runs)
    for m in (2, 3, 5):
        out = run_one(llm, prompt, stop=[piece, *extra_stops], min_tokens=m, max_tokens=N)
        assert out.text == piece * (m - 1), f"min_tokens={m}"
