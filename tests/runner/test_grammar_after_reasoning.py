"""A grammar that starts after a text (a reasoning model's `</think>`): the matcher masks
nothing until the sequence has written that text, however the tokenizer splits it (GPT-2's
tokenizer writes `</think>` in several tokens), then holds the rest to the grammar."""

from __future__ import annotations

import dataclasses

import numpy as np

from nanovllm.runner.structured import GrammarMatcher
from nanovllm.structured import GrammarCompiler


def test_the_grammar_starts_after_the_tag(make_engine):
    engine = make_engine()
    tok = engine.tokenizer
    grammar = GrammarCompiler(tok).compile("regex", "[0-9]{3}", "guided_regex")
    gated = GrammarMatcher(dataclasses.replace(grammar, starts_after=b"</think>"),
                           tok.eos_token_id)
    thought = tok.encode("I think so.</think>", add_special_tokens=False)
    assert len(tok.encode("</think>", add_special_tokens=False)) > 1
    for token in thought:
        logits = np.zeros(engine.vocab_size, dtype=np.float32)
        gated.mask_logits_(logits)
        assert np.isfinite(logits).all()  # reasoning: free
        assert not gated.is_complete
        gated.accept(token)
    logits = np.zeros(engine.vocab_size, dtype=np.float32)
    gated.mask_logits_(logits)
    allowed = [tok.decode([t]) for t in np.flatnonzero(np.isfinite(logits))]
    assert allowed and all(s.isdigit() for s in allowed)  # the answer: the grammar's
    for token in tok.encode("123", add_special_tokens=False):
        gated.accept(token)
    assert gated.is_complete
