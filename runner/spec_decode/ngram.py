"""N-gram prompt lookup (vLLM's `method: "ngram"`): propose the tokens that followed an earlier
occurrence of the sequence's last few tokens, in its own prompt and output.

vLLM's rule: the longest suffix of length prompt_lookup_min..prompt_lookup_max that occurs
earlier wins; among its occurrences, the earliest; the proposal is the (up to) k tokens after it,
fewer when the context ends first, none past max_model_len.

The search is a compiled loop (`first_match`): it runs for every speculating decode of every
step, and numpy's calls over windows of a few tokens cost tens of microseconds a sequence, a
share of a small model's step. `tests/spec_decode/test_spec_pieces.py` holds a plain reference.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def first_match(tokens, min_n, max_n):
    """Where the proposal starts: just after the earliest earlier occurrence (it may overlap the
    suffix itself, as vLLM's do) of the longest suffix of min_n..max_n tokens; -1 if none."""
    total = tokens.shape[0]
    for n in range(min(max_n, total - 1), min_n - 1, -1):
        for i in range(total - n):  # occurrences that start before the suffix
            j = 0
            while j < n and tokens[i + j] == tokens[total - n + j]:
                j += 1
            if j == n:
                return i + n
    return -1


def compile_ngram() -> None:
    """Compiles `first_match` now (or loads it from numba's cache on disk)."""
    first_match(np.zeros(2, np.int64), 1, 1)


def propose_ngram(token_ids: Sequence[int] | np.ndarray, k: int, min_n: int, max_n: int,
                  max_model_len: int) -> list[int]:
    total = len(token_ids)
    k = min(k, max_model_len - total)
    if k <= 0 or total < min_n + 1:
        return []
    tokens = np.asarray(token_ids, dtype=np.int64)
    start = first_match(tokens, min_n, max_n)
    return tokens[start:start + k].tolist() if start >= 0 else []
