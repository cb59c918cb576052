"""BeamSearchParams and the input processor's beam checks: every refusal names its field."""

from __future__ import annotations

import pytest

import nanovllm
from nanovllm import InvalidRequestError
from nanovllm.beam_search import beam_blocks_needed
from nanovllm.values.beam_search_params import BeamSearchParams
from nanovllm.values.limits import MAX_BEAM_TOKENS, MAX_BEAM_WIDTH


@pytest.mark.parametrize("fields, param", [
    (dict(beam_width=0), "beam_width"),
    (dict(beam_width=MAX_BEAM_WIDTH + 1), "beam_width"),
    (dict(beam_width=2.0), "beam_width"),
    (dict(max_tokens=0), "max_tokens"),
    (dict(max_tokens=MAX_BEAM_TOKENS + 1), "max_tokens"),
    (dict(temperature=-1.0), "temperature"),
    (dict(length_penalty=float("nan")), "length_penalty"),
    (dict(length_penalty=1e6), "length_penalty"),
    (dict(ignore_eos="yes"), "ignore_eos"),
])
def test_bad_params_name_their_field(fields, param):
    with pytest.raises(InvalidRequestError) as info:
        BeamSearchParams(**{"beam_width": 2, "max_tokens": 8, **fields})
    assert info.value.param == param


def test_the_package_exports_it_as_vllm_does():
    from nanovllm import BeamSearchParams as exported
    assert exported is BeamSearchParams
    assert "BeamSearchParams" in nanovllm.__all__ and "BeamSearchParams" in dir(nanovllm)


def test_every_name_the_package_lists_resolves():
    assert sorted(set(nanovllm.__all__) - {"__version__"}) == sorted(nanovllm._EXPORTS)
    for name in nanovllm.__all__:
        assert getattr(nanovllm, name) is not None


def test_worst_case_blocks():
    # 10 prompt tokens in blocks of 4: 2 full blocks shared; to 18 tokens = 5 blocks, 3 own each.
    assert beam_blocks_needed(10, 8, 4, 4) == 2 + 4 * 3
    assert beam_blocks_needed(10, 8, 1, 4) == 5  # width 1: one sequence's blocks


def test_a_beam_search_that_could_never_fit_is_refused(make_engine):
    engine = make_engine(num_kv_blocks=20, block_size=4)
    prompt = list(range(40))  # 10 full blocks
    ok = engine.processor.process_beam("a", prompt, BeamSearchParams(2, 8))  # 10 + 2 * 2
    assert ok.beam.beam_width == 2 and ok.params.n == 2
    with pytest.raises(InvalidRequestError) as info:
        engine.processor.process_beam("b", prompt, BeamSearchParams(8, 8))  # 10 + 8 * 2
    assert info.value.param == "max_tokens" and "beam search of width 8" in str(info.value)
