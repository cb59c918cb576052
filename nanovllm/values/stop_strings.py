"""Stop strings: where one ends in new text, and how much trailing text might still start one.

A streamed or polled output must not show text that a stop string may yet swallow, so each step
holds back the longest tail of the text that is a proper prefix of some stop string. Checking
every prefix of every stop string costs the sum of their squared lengths per step; instead an
Aho-Corasick automaton over the stop strings (built once per request) reads only the last
`max(len(stop)) - 1` characters, one dictionary lookup per character, however many stops there are.
"""

from __future__ import annotations


class StopStrings(list):
    """A request's stop strings (a plain list to everyone else) and their automaton, built once."""

    # No __init__ of its own (list's does the work): the automaton is made only once a stop
    # string needs it, so a request without stop strings runs nothing of this module.
    __slots__ = ("_matcher",)

    @property
    def matcher(self) -> PrefixMatcher:
        try:
            return self._matcher
        except AttributeError:
            self._matcher = PrefixMatcher(self)
            return self._matcher

    def __reduce__(self):  # pickle the strings; the automaton is rebuilt where it is needed
        return (StopStrings, (list(self),))


class PrefixMatcher:
    """Aho-Corasick over the stop strings: node 0 is "", every other node one stop's prefix."""

    __slots__ = ("window", "_goto", "_fail", "_held")

    def __init__(self, stops: list[str]) -> None:
        self.window = max((len(s) for s in stops), default=1) - 1
        self._goto: list[dict[str, int]] = [{}]
        depth = [0]
        for stop in stops:
            node = 0
            for ch in stop:
                if ch not in self._goto[node]:
                    self._goto[node][ch] = len(self._goto)
                    self._goto.append({})
                    depth.append(depth[node] + 1)
                node = self._goto[node][ch]
        self._fail, order = self._failure_links()
        # The longest suffix of a node's string that is a *proper* prefix of some stop: the node
        # itself if some stop goes on from it (it has children), else its failure link's answer.
        self._held = [0] * len(self._goto)
        for node in order:
            self._held[node] = depth[node] if self._goto[node] else self._held[self._fail[node]]

    def _failure_links(self) -> tuple[list[int], list[int]]:
        """Each node's longest proper suffix that is also a node, and the breadth-first order."""
        goto, fail = self._goto, [0] * len(self._goto)
        order = list(goto[0].values())
        for node in order:  # grows while iterating: breadth-first, parents before children
            for ch, child in goto[node].items():
                fail[child] = self._step(fail[node], ch, fail)
                order.append(child)
        return fail, order

    def _step(self, node: int, ch: str, fail: list[int]) -> int:
        goto = self._goto
        while node and ch not in goto[node]:
            node = fail[node]
        return goto[node].get(ch, 0)

    def held_back(self, text: str) -> int:
        """How many trailing characters of `text` are a proper prefix of some stop string."""
        if not self.window:
            return 0
        node, fail = 0, self._fail
        for ch in text[-self.window:]:
            node = self._step(node, ch, fail)
        return self._held[node]


def find_stop(text: str, stops: list[str], old_len: int) -> tuple[int, str] | None:
    """The earliest stop string that ends after the first `old_len` characters of `text`,
    as (index, stop)."""
    hits = [(i, s) for s in stops if (i := text.find(s, max(0, old_len - len(s) + 1))) >= 0]
    return min(hits) if hits else None


def held_back(text: str, stops: list[str]) -> int:
    """How many trailing characters could still be the start of a stop string."""
    if not stops:
        return 0
    matcher = stops.matcher if isinstance(stops, StopStrings) else PrefixMatcher(stops)
    return matcher.held_back(text)
