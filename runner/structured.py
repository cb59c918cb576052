"""Structured outputs in the runner: each constrained sequence's grammar matcher.

The request side (nanovllm/structured.py) compiles and checks a grammar into a CompiledGrammar,
which travels in SamplingParams.structured. When the runner first sees a sequence that carries
one, it gives the sequence its own GrammarMatcher, kept in its SequenceState: the sampler asks
it to ban what the grammar does not allow just before sampling, and the runner advances it with
every token the sequence takes. It lives and dies with that state: kept while the sequence is
preempted, dropped when it finishes. Once the grammar is complete llguidance allows only EOS,
which finishes the sequence; a matcher in error (it refused a token) does the same.

Building a matcher from a grammar's text compiles it again, so the runner keeps one untouched
matcher per grammar it saw lately (StartMatchers) and gives each new sequence a copy of it.

A grammar may start only after a text (`starts_after`: a reasoning model's `</think>`): until
the sequence has written it, the matcher masks nothing and reads tokens only as text, so a tag
of several tokens is found like one of a single token.

llguidance (the optional 'structured' extra) is imported only when a constrained sequence
arrives: requests without a constraint never touch this module's machinery.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CompiledGrammar:
    """One request's grammar, compiled and checked; shared by all of its sequences."""
    grammar: str       # llguidance's serialized grammar
    tokenizer: Any     # llguidance.LLTokenizer over the engine's vocabulary
    starts_after: bytes = b""  # the grammar applies once the output holds this text


def apply_token_bitmask_(logits: np.ndarray, bitmask: np.ndarray) -> None:
    """Sets, in place, the logits of the tokens whose bit is 0 in `bitmask` (llguidance's
    packed int32 words, token i at bit i % 32 of word i // 32) to -inf. Ids past the mask's
    end are not in the grammar's vocabulary: they are banned too."""
    allowed = np.unpackbits(bitmask.view(np.uint8), bitorder="little").view(bool)
    n = min(len(allowed), logits.shape[-1])
    logits[:n][~allowed[:n]] = -np.inf
    logits[n:] = -np.inf


class StartMatchers:
    """An llguidance matcher at the start of each of the last `size` grammars seen, least
    recently used evicted first; `built` counts the matchers built from a grammar's text."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._matchers: OrderedDict[str, Any] = OrderedDict()  # by the grammar's text
        self.built = 0

    def new(self, grammar: CompiledGrammar):
        """A fresh matcher for `grammar`: a copy of the kept one (copying shares the compiled
        grammar; the parse state is the copy's own)."""
        start = self._matchers.get(grammar.grammar)
        if start is None:
            import llguidance

            start = llguidance.LLMatcher(grammar.tokenizer, grammar.grammar, log_level=0)
            self.built += 1
            self._matchers[grammar.grammar] = start
            while len(self._matchers) > self._size:
                self._matchers.popitem(last=False)
        else:
            self._matchers.move_to_end(grammar.grammar)
        return start.deep_copy()


class GrammarMatcher:
    """One sequence's llguidance matcher and the bitmask buffer it fills each step."""

    __slots__ = ("_matcher", "_bitmask", "_eos_token_id", "_tokenizer", "_waiting_for", "_tail")

    def __init__(self, grammar: CompiledGrammar, eos_token_id: int,
                 starts: StartMatchers | None = None) -> None:
        """`starts`: where its matcher is copied from (None: built from the grammar's text)."""
        import llguidance
        import llguidance.numpy as lnp

        self._matcher = starts.new(grammar) if starts is not None else \
            llguidance.LLMatcher(grammar.tokenizer, grammar.grammar, log_level=0)
        self._bitmask = lnp.allocate_token_bitmask(1, grammar.tokenizer.vocab_size)
        self._eos_token_id = eos_token_id
        self._tokenizer = grammar.tokenizer
        self._waiting_for = grammar.starts_after  # b"" once the grammar applies
        self._tail = b""  # the output's last bytes while waiting

    def mask_logits_(self, logits: np.ndarray) -> None:
        """Bans, in place, every token the grammar does not allow next."""
        from llguidance.numpy import fill_next_token_bitmask

        if self._waiting_for:
            return
        if self._matcher.is_error():
            logits[:] = -np.inf
            logits[self._eos_token_id] = 0.0
            return
        fill_next_token_bitmask(self._matcher, self._bitmask, 0)
        apply_token_bitmask_(logits, self._bitmask[0])

    def accept(self, token: int) -> None:
        """Advances past the sequence's new token (one the mask allowed, so normally fine)."""
        if self._waiting_for:
            self._tail = self._tail[-len(self._waiting_for):] + \
                self._tokenizer.decode_bytes([token])
            if self._waiting_for in self._tail:
                self._waiting_for = b""
            return
        if not self._matcher.consume_token(token):
            logger.warning("grammar matcher refused token %d (%s); ending the sequence",
                           token, self._matcher.get_error())

    @property
    def is_complete(self) -> bool:
        """The grammar has matched a whole output and allows nothing more but EOS."""
        return not self._waiting_for and self._matcher.is_stopped()
