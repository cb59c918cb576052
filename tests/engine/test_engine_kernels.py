"""The engine compiles its numba kernels when it starts, for every signature a step uses, so the
first request never waits seconds for a compile."""

from __future__ import annotations

import pytest

from model.attention import paged_decode_attention, softmax_rows_, write_slots
from model.gpt2 import gelu, layer_norm
from model.linear import matmul_nt
from nanovllm import SamplingParams


@pytest.mark.parametrize("kv_cache_dtype", ["auto", "float16"])
def test_first_request_compiles_nothing_new(make_llm, kv_cache_dtype):
    llm = make_llm(kv_cache_dtype=kv_cache_dtype)
    kernels = (matmul_nt, paged_decode_attention, layer_norm, gelu, write_slots, softmax_rows_)
    before = [list(k.signatures) for k in kernels]
    llm.generate([[1, 2, 3], [4, 5]], SamplingParams(max_tokens=4, ignore_eos=True))
    assert [list(k.signatures) for k in kernels] == before
