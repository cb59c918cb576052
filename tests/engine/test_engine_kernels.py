"""The engine compiles its numba kernels when it starts, for every signature a step uses, so the
first request never waits seconds for a compile."""

from __future__ import annotations

from model.attention import paged_decode_attention
from model.linear import matmul_nt
from nanovllm import SamplingParams


def test_first_request_compiles_nothing_new(make_llm):
    llm = make_llm()
    before = (list(matmul_nt.signatures), list(paged_decode_attention.signatures))
    llm.generate([[1, 2, 3], [4, 5]], SamplingParams(max_tokens=4, ignore_eos=True))
    after = (list(matmul_nt.signatures), list(paged_decode_attention.signatures))
    assert after == before
