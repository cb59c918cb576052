"""Speculative decoding's pure pieces: the config, n-gram lookup, the rejection sampler (with
the chi-square harness every distribution test here uses)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

from nanovllm.runner.spec_decode.ngram import first_match, propose_ngram
from nanovllm.runner.spec_decode.rejection_sampler import accept_greedy, accept_sampled
from nanovllm.values.limits import MAX_NUM_SPECULATIVE_TOKENS, MAX_PROMPT_LOOKUP
from nanovllm.values.speculative import (
    DEFAULT_DISABLE_BY_BATCH_SIZE,
    DEFAULT_PROMPT_LOOKUP,
    SpeculativeConfig,
)


# ---- config ------------------------------------------------------------------------------------
def test_config_parses_vllm_shapes():
    c = SpeculativeConfig.parse('{"method": "ngram", "num_speculative_tokens": 3, '
                                '"prompt_lookup_max": 4, "prompt_lookup_min": 2}')
    assert (c.method, c.num_speculative_tokens, c.prompt_lookup_min, c.prompt_lookup_max) == (
        "ngram", 3, 2, 4)
    d = SpeculativeConfig.parse({"model": "/x", "num_speculative_tokens": 4, "quantization": "int8"})
    assert (d.method, d.model, d.quantization) == ("draft_model", "/x", "int8")
    assert d.adaptive and not SpeculativeConfig.parse({"num_speculative_tokens": 2,
                                                       "adaptive": False}).adaptive
    # vLLM: one lookup length given sets both; none gives its default.
    assert SpeculativeConfig.parse({"num_speculative_tokens": 2, "prompt_lookup_max": 3}
                                   ).prompt_lookup_min == 3
    assert SpeculativeConfig.parse({"num_speculative_tokens": 2}).prompt_lookup_max == (
        DEFAULT_PROMPT_LOOKUP)


@pytest.mark.parametrize("value, key", [
    ({"num_speculative_tokens": 2, "lookup": 3}, "'lookup'"),
    ({"method": "ngram"}, "num_speculative_tokens"),
    ({"num_speculative_tokens": 0}, "num_speculative_tokens"),
    ({"num_speculative_tokens": MAX_NUM_SPECULATIVE_TOKENS + 1}, "num_speculative_tokens"),
    ({"num_speculative_tokens": True}, "num_speculative_tokens"),
    ({"num_speculative_tokens": 2, "prompt_lookup_max": MAX_PROMPT_LOOKUP + 1}, "prompt_lookup_max"),
    ({"num_speculative_tokens": 2, "prompt_lookup_min": 4, "prompt_lookup_max": 2}, "prompt_lookup_min"),
    ({"num_speculative_tokens": 2, "method": "eagle"}, "method"),
    ({"num_speculative_tokens": 2, "method": "draft_model"}, "model"),
    ({"num_speculative_tokens": 2, "model": "/x", "quantization": "fp8"}, "quantization"),
    ({"num_speculative_tokens": 2, "model": "/x", "prompt_lookup_max": 2}, "prompt_lookup_max"),
    ({"num_speculative_tokens": 2, "quantization": "int8"}, "quantization"),
    ({"num_speculative_tokens": 2, "disable_by_batch_size": 1}, "disable_by_batch_size"),
    ({"num_speculative_tokens": 2, "adaptive": "no"}, "adaptive"),
    ("{not json", "JSON"),
    ("[1]", "object"),
])
def test_config_errors_name_the_key(value, key):
    with pytest.raises(ValueError, match=key):
        SpeculativeConfig.parse(value)


def test_disable_by_batch_size():
    c = SpeculativeConfig.parse({"num_speculative_tokens": 2, "disable_by_batch_size": 4})
    assert c.speculates(3) and not c.speculates(4)  # vLLM: off from the value on
    assert SpeculativeConfig.parse({"num_speculative_tokens": 2, "disable_by_batch_size": None}
                                   ).speculates(10**6)
    # Unset, each method gets its measured default: a draft's k passes stop paying sooner.
    ngram = SpeculativeConfig.parse({"num_speculative_tokens": 2})
    draft = SpeculativeConfig.parse({"num_speculative_tokens": 2, "model": "/x"})
    assert ngram.disable_by_batch_size == DEFAULT_DISABLE_BY_BATCH_SIZE["ngram"]
    assert draft.disable_by_batch_size == DEFAULT_DISABLE_BY_BATCH_SIZE["draft_model"]
    assert draft.speculates(1) and not draft.speculates(ngram.disable_by_batch_size - 1)


# ---- n-gram lookup -----------------------------------------------------------------------------
def reference_ngram(tokens, k, min_n, max_n, max_model_len):
    """The rule spelled out: longest suffix first, earliest earlier occurrence."""
    k = min(k, max_model_len - len(tokens))
    if k <= 0:
        return []
    for n in range(max_n, min_n - 1, -1):
        if n >= len(tokens):
            continue
        suffix = tokens[-n:]
        for s in range(len(tokens) - n):
            if tokens[s:s + n] == suffix:
                return tokens[s + n:s + n + k]
    return []


def test_ngram_vllm_example():
    # vLLM's docstring: [4,2,3] has no earlier match, [2,3] does; only three tokens follow it.
    assert propose_ngram([1, 2, 3, 4, 2, 3], 4, 2, 3, 1024) == [4, 2, 3]
    assert propose_ngram([1, 2, 3, 4, 2, 3], 4, 3, 3, 1024) == []
    # Earliest occurrence, longest match first.
    assert propose_ngram([5, 1, 7, 9, 1, 8, 6, 1], 2, 1, 2, 1024) == [7, 9]
    assert propose_ngram([5, 6, 1, 7, 9, 6, 1, 8, 6, 1], 2, 1, 2, 1024) == [7, 9]
    # Never past max_model_len.
    assert propose_ngram([1, 2, 1, 2, 1], 4, 1, 2, 7) == [2, 1]
    assert propose_ngram([1, 2, 1], 4, 1, 2, 3) == []


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 3), max_size=40), st.integers(1, 6), st.integers(1, 4),
       st.integers(0, 3), st.integers(0, 50))
def test_ngram_matches_reference(tokens, k, min_n, extra, room):
    max_n = min_n + extra
    assert propose_ngram(tokens, k, min_n, max_n, len(tokens) + room) == reference_ngram(
        tokens, k, min_n, max_n, len(tokens) + room)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 3), min_size=2, max_size=40), st.integers(1, 4), st.integers(0, 3))
def test_ngram_search_compiled_as_in_python(tokens, min_n, extra):
    """The compiled search and its Python source (what NUMBA_DISABLE_JIT=1 runs) agree."""
    ids = np.array(tokens, np.int64)
    python = getattr(first_match, "py_func", first_match)  # the function itself without JIT
    assert first_match(ids, min_n, min_n + extra) == python(ids, min_n, min_n + extra)


# ---- rejection sampler -------------------------------------------------------------------------
def test_greedy_acceptance():
    argmax = np.array([5, 6, 7, 8])
    assert accept_greedy(argmax, [5, 6, 7]) == [5, 6, 7, 8]   # all kept, then the bonus
    assert accept_greedy(argmax, [5, 9, 7]) == [5, 6]         # the target corrects the first miss
    assert accept_greedy(argmax[:1], []) == [5]


def assert_distribution(samples: np.ndarray, probs: np.ndarray, alpha: float = 1e-4) -> None:
    """Chi-square: `samples` (token ids) are drawn from `probs` (bins with tiny expected counts
    are pooled, as the test needs)."""
    counts = np.bincount(samples, minlength=len(probs)).astype(float)
    expected = probs * len(samples)
    assert counts[expected == 0].sum() == 0, "a token of probability 0 was drawn"
    big = expected >= 5
    obs = np.append(counts[big], counts[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    assert chisquare(obs, exp * obs.sum() / exp.sum()).pvalue > alpha


def _probs(rng, vocab, peaked):
    logits = rng.normal(size=vocab) * (3.0 if peaked else 1.0)
    p = np.exp(logits - logits.max())
    p[rng.integers(vocab)] = 0.0  # a banned token (top-k, a bias of -inf)
    return p / p.sum()


@pytest.mark.parametrize("with_draft", [True, False])
def test_rejection_sampling_keeps_the_target_distribution(with_draft):
    """Every position's output is distributed as the target's, whatever the proposer does: the
    first token directly, the second given the first (here the target does not depend on it)."""
    rng = np.random.default_rng(0)
    vocab, k, n = 12, 3, 40_000
    target = np.stack([_probs(rng, vocab, True) for _ in range(k + 1)])
    draft = np.stack([_probs(rng, vocab, False) for _ in range(k)]) if with_draft else None
    first, second = [], []
    gen = np.random.default_rng(1)
    for _ in range(n):
        if with_draft:
            proposals = [int(gen.choice(vocab, p=draft[j])) for j in range(k)]
        else:
            proposals = [3, 1, 4]  # an n-gram proposal: certain
        out = accept_sampled(target, proposals, draft, gen)
        first.append(out[0])
        if len(out) > 1:  # position 1 is reached only after proposal 0 was kept
            second.append(out[1])
    assert_distribution(np.array(first), target[0])
    assert_distribution(np.array(second), target[1])


def test_rejection_sampling_is_reproducible():
    rng = np.random.default_rng(0)
    target = np.stack([_probs(rng, 8, True) for _ in range(3)])
    runs = [[accept_sampled(target, [1, 2], None, np.random.default_rng([7, 0]))
             for _ in range(1)] for _ in range(2)]
    assert runs[0] == runs[1]


def test_rejection_never_keeps_an_impossible_token():
    target = np.array([[0.0, 1.0], [0.5, 0.5]])
    for seed in range(50):
        assert accept_sampled(target, [0], None, np.random.default_rng(seed))[0] == 1
