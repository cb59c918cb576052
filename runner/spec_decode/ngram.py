"""N-gram prompt lookup (vLLM's `method: "ngram"`): propose the tokens that followed an earlier
occurrence of the sequence's last few tokens, in its own prompt and output.

vLLM's rule: the longest suffix of length prompt_lookup_min..prompt_lookup_max that occurs
earlier wins; among its occurrences, the earliest; the proposal is the (up to) k tokens after it,
fewer when the context ends first, none past max_model_len.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def propose_ngram(token_ids: Sequence[int] | np.ndarray, k: int, min_n: int, max_n: int,
                  max_model_len: int) -> list[int]:
    tokens = np.asarray(token_ids, dtype=np.int64)
    total = len(tokens)
    k = min(k, max_model_len - total)
    if k <= 0 or total < min_n + 1:
        return []
    for n in range(min(max_n, total - 1), min_n - 1, -1):
        # Windows that start before the suffix itself (they may overlap it, as vLLM's do).
        windows = sliding_window_view(tokens[:total - 1], n)
        hits = np.flatnonzero((windows == tokens[total - n:]).all(axis=1))
        if len(hits):
            start = int(hits[0]) + n
            return tokens[start:start + k].tolist()
    return []
