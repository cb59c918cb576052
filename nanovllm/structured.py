"""Structured outputs: a grammar constrains which tokens a sequence may sample next.

llguidance does the grammar work (JSON schema, regex, Lark/GBNF): it runs on CPU, needs no
torch, builds each matcher lazily (no up-front automaton over the whole vocabulary) and bounds
its own per-token work. It is an optional dependency (`pip install nanovllm[structured]`).

A `GrammarConstraint` is one request's compiled grammar; it travels in
SamplingParams.structured, and each of the request's sequences gets its own matcher from it
(keyed by seq id). Every step the sampler calls `mask_logits_` on a constrained row, after logit
bias and penalties and before sampling; logprobs stay those of the raw logits, as in vLLM.
The matcher catches up with the sequence's tokens first, so it never has to be told about a
token separately and is unaffected by preemption. Once the grammar is complete only EOS is
allowed, which finishes the sequence.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from nanovllm.errors import InvalidRequestError

if TYPE_CHECKING:
    from nanovllm.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

INSTALL_HINT = "structured outputs need llguidance: pip install 'nanovllm[structured]'"


def apply_token_bitmask_(logits: np.ndarray, bitmask: np.ndarray) -> None:
    """Sets, in place, the logits of the tokens whose bit is 0 in `bitmask` (llguidance's
    packed int32 words, token i at bit i % 32 of word i // 32) to -inf. Ids past the mask's
    end are not in the grammar's vocabulary: they are banned too."""
    allowed = np.unpackbits(bitmask.view(np.uint8), bitorder="little").view(bool)
    n = min(len(allowed), logits.shape[-1])
    logits[:n][~allowed[:n]] = -np.inf
    logits[n:] = -np.inf


class _SequenceMatcher:
    """One sequence's llguidance matcher and how many of its output tokens it has seen."""

    __slots__ = ("matcher", "num_consumed")

    def __init__(self, matcher) -> None:
        self.matcher = matcher
        self.num_consumed = 0


@dataclass(slots=True, eq=False)
class GrammarConstraint:
    grammar: str  # llguidance's serialized grammar
    tokenizer: Any  # llguidance.LLTokenizer
    eos_token_id: int
    _matchers: dict[int, _SequenceMatcher] = field(default_factory=dict)

    def mask_logits_(self, logits: np.ndarray, seq_id: int, output_token_ids: list[int]) -> None:
        """Bans, in place, every token the grammar does not allow after `output_token_ids`."""
        import llguidance.numpy as lnp

        state = self._matchers.get(seq_id)
        if state is None:
            state = self._matchers[seq_id] = _SequenceMatcher(
                _new_matcher(self.tokenizer, self.grammar))
        m = state.matcher
        new = output_token_ids[state.num_consumed:]
        if new and not m.consume_tokens(new):
            logger.warning("grammar matcher refused a token (%s); ending the sequence", m.get_error())
        state.num_consumed = len(output_token_ids)
        if m.is_error():
            logits[:] = -np.inf
            logits[self.eos_token_id] = 0.0
            return
        bitmask = lnp.allocate_token_bitmask(1, self.tokenizer.vocab_size)
        lnp.fill_next_token_bitmask(m, bitmask, 0)
        apply_token_bitmask_(logits, bitmask[0])


def _new_matcher(tokenizer, grammar: str):
    import llguidance

    return llguidance.LLMatcher(tokenizer, grammar, log_level=0)


class _TokenizerAdapter:
    """What llguidance.TokenizerWrapper reads from a tokenizer, taken from ours."""

    def __init__(self, tok: Tokenizer) -> None:
        self.eos_token_id = tok.eos_token_id
        self.bos_token_id = None
        self.tokens = tok.token_bytes
        self.special_token_ids = sorted(tok.special_ids)
        self._encode = tok.encode

    def __call__(self, text: str | bytes) -> list[int]:
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        return self._encode(text)


class GrammarCompiler:
    """Compiles and checks grammars for one tokenizer. llguidance's view of the vocabulary is
    built on first use (it takes a moment for GPT-2's), then shared by every request."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        self._ll_tokenizer = None
        self._lock = threading.Lock()

    def _ll(self):
        try:
            import llguidance
        except ImportError:
            raise InvalidRequestError(INSTALL_HINT, "structured_outputs") from None
        with self._lock:
            if self._ll_tokenizer is None:
                wrapper = llguidance.TokenizerWrapper(_TokenizerAdapter(self._tokenizer))
                self._ll_tokenizer = llguidance.LLTokenizer(wrapper)
            return self._ll_tokenizer

    def compile(self, kind: str, value: Any, param: str) -> GrammarConstraint:
        """kind: "json" (a schema), "regex", "choice" (a list of strings) or "grammar" (Lark, or
        GBNF as llama.cpp writes it). A malformed one is an InvalidRequestError naming `param`."""
        tokenizer = self._ll()
        import llguidance

        try:
            grammar = _grammar_text(llguidance, kind, value)
            error = llguidance.LLMatcher.validate_grammar(grammar, tokenizer)
        except (ValueError, TypeError, RuntimeError) as exc:
            error = str(exc)
        if error:
            raise InvalidRequestError(f"Invalid {param}: {error}", param)
        return GrammarConstraint(grammar, tokenizer, self._tokenizer.eos_token_id)


# Our kinds, as llguidance.grammar_from names them ("grammar": Lark, or GBNF as llama.cpp writes).
_FORMATS = {"regex": "regex", "choice": "choice", "grammar": "grammar"}
# JSON without optional whitespace (", " and ": " separators): a small model given the freedom
# fills its token budget with blanks. A schema may still ask otherwise through "x-guidance".
JSON_OPTIONS = {"whitespace_flexible": False}


def _grammar_text(llguidance, kind: str, value: Any) -> str:
    if kind == "json":
        return llguidance.LLMatcher.grammar_from_json_schema(value, defaults=JSON_OPTIONS)
    text = value if kind != "choice" else json.dumps(value)
    return llguidance.grammar_from(_FORMATS[kind], text)
