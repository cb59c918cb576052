"""The held-back stop check: one automaton pass over a bounded window equals the definition."""

from __future__ import annotations

import pickle

from hypothesis import given, settings
from hypothesis import strategies as st

from nanovllm import SamplingParams
from nanovllm.values.stop_strings import PrefixMatcher, StopStrings, held_back


def held_back_by_definition(text: str, stops: list[str]) -> int:
    """The longest tail of `text` that is a proper prefix of some stop string."""
    return max((k for s in stops for k in range(1, len(s)) if k <= len(text)
                and text.endswith(s[:k])), default=0)


ALPHABET = st.sampled_from("abcé\U0001f600")  # few letters: prefixes overlap often


@settings(max_examples=400, deadline=None)
@given(text=st.text(ALPHABET, max_size=12),
       stops=st.lists(st.text(ALPHABET, min_size=1, max_size=6), min_size=1, max_size=5))
def test_held_back_matches_the_definition(text, stops):
    assert held_back(text, stops) == held_back_by_definition(text, stops)
    assert held_back(text, StopStrings(stops)) == held_back_by_definition(text, stops)


def test_examples():
    assert held_back("Hello wor", ["world"]) == 3
    assert held_back("Hello world", ["world"]) == 0  # a whole stop is found, not held back
    assert held_back("aaab", ["aab", "aaabc"]) == 4  # the longer stop's prefix wins
    assert held_back("abab", ["ababx", "bx"]) == 4
    assert held_back("x", ["a"]) == 0  # one-character stops never hold text back


def test_the_matcher_reads_only_the_window():
    """Text before the last max(len(stop)) - 1 characters is never looked at."""
    matcher = PrefixMatcher(["abc", "zzzz"])
    assert matcher.window == 3

    class Guarded(str):
        def __iter__(self):
            raise AssertionError("the whole text was scanned")

    assert matcher.held_back(Guarded("q" * 10_000 + "zz")) == 2


def test_sampling_params_build_the_automaton_once_and_pickle():
    params = SamplingParams(stop=["foo", "bar"])
    assert isinstance(params.stop, StopStrings) and params.stop == ["foo", "bar"]
    assert params.stop.matcher is params.stop.matcher
    copy = pickle.loads(pickle.dumps(params))
    assert copy.stop == ["foo", "bar"] and held_back("xfo", copy.stop) == 2
