"""The engine compiles its numba kernels when it starts, for every signature a step uses, so the
first request never waits seconds for a compile."""

from __future__ import annotations

from model.attention import paged_decode_attention
from model.gpt2 import layer_norm
from model.linear import matmul_nt
from nanovllm import SamplingParams


def test_first_request_compiles_nothing_new(make_llm):
    llm = make_llm()
    kernels = (matmul_nt, paged_decode_attention, layer_norm)
    before = [list(k.signatures) for k in kernels]
    llm.generate([[1, 2, 3], [4, 5]], SamplingParams(max_tokens=4, ignore_eos=True))
    assert [list(k.signatures) for k in kernels] == before
