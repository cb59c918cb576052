"""The beam rule alone (nanovllm/beam_search.py), fed transformers' own logprobs, returns
transformers' beams: token for token, best first, cum logprobs within 1e-4. The engine's beams
are checked against the same reference in test_engine_beam_search.py."""

from __future__ import annotations

from collections import Counter

import pytest
from beam_checks import assert_same_beams, hf_beams, scorer_beams
from engine_checks import random_prompts

from nanovllm.beam_search import BeamScorer

PROMPTS = random_prompts(seed=25, count=3, low=3, high=60)


@pytest.mark.parametrize("width", [1, 2, 4, 8])
def test_scorer_matches_transformers(hf_tiny, width):
    for prompt in PROMPTS:
        what = f"width {width}, prompt of {len(prompt)}"
        assert_same_beams(scorer_beams(hf_tiny, prompt, width, 10),
                          hf_beams(hf_tiny, prompt, width, 10), what)


@pytest.mark.parametrize("length_penalty", [1.0, 0.0, 2.0, -1.0])
def test_scorer_matches_transformers_with_frequent_eos(hf_tiny, length_penalty):
    """EOS in play: tokens the model often generates stand in for EOS on both sides, so beams
    end early, hypotheses compete by length-penalised score and the search stops early."""
    ended_on_eos = 0
    for prompt in PROMPTS[:2]:
        for eos in frequent_tokens(hf_tiny, prompt, 3):
            ours = scorer_beams(hf_tiny, prompt, 4, 12, length_penalty, eos)
            ref = hf_beams(hf_tiny, prompt, 4, 12, length_penalty, eos)
            assert_same_beams(ours, ref, f"EOS {eos}, length_penalty {length_penalty}")
            ended_on_eos += sum(b.tokens[-1] == eos for b in ref)
    assert ended_on_eos, "EOS was meant to end some beams"


def frequent_tokens(hf, prompt: list[int], count: int) -> list[int]:
    """The tokens transformers' width-4 beams generate most often."""
    counts = Counter(t for b in hf_beams(hf, prompt, 4, 12) for t in b.tokens)
    return [t for t, _ in counts.most_common(count)]


def test_scorer_rules_by_hand():
    """Width 2, EOS = 0: the best candidate ends (a hypothesis), the live beams are the next
    two; the search stops once 2 hypotheses beat the best live beam at its length."""
    scorer = BeamScorer(width=2, max_tokens=10, eos_token_ids=(0,), length_penalty=1.0)
    step = scorer.next_round([0.0], [([0, 1, 2, 3], [-0.1, -0.5, -1.0, -3.0])], 0)
    assert [(c.parent, c.token) for c in step.live] == [(0, 1), (0, 2)]
    assert [(h.candidate.token, h.score) for h in step.new_hypotheses] == [(0, -0.1)]
    assert not scorer.done
    # EOS from beam 1 at -1.0 - 0.2 is the 2nd candidate: kept, scored -1.2 / 2 = -0.6; the
    # best live beam, -0.5 - 0.3 = -0.8, at length 2 scores -0.4 > -0.6: not done.
    step = scorer.next_round([-0.5, -1.0], [([3, 0], [-0.3, -4.0]), ([0, 4], [-0.2, -3.0])], 1)
    assert [h.score for h in scorer.hypotheses] == pytest.approx([-0.1, -0.6])
    assert not scorer.done
    # Now every live candidate is worse than -0.6 at length 3 (-0.8 - 1.5 = -2.3, / 3 < -0.6).
    scorer.next_round([-0.8, -4.3], [([5, 6], [-1.5, -2.0]), ([7, 8], [-1.0, -2.0])], 2)
    assert scorer.done and [h.score for h in scorer.hypotheses] == pytest.approx([-0.1, -0.6])


def test_scorer_length_limit_finishes_the_best_k():
    scorer = BeamScorer(width=2, max_tokens=1, eos_token_ids=())
    step = scorer.next_round([0.0], [([5, 6, 7, 8], [-0.1, -0.2, -0.3, -0.4])], 0)
    assert step.live == [] and scorer.done
    assert [(h.candidate.token, h.finish_reason) for h in scorer.hypotheses] == [(5, "length"),
                                                                                 (6, "length")]
