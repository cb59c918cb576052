"""Beam search parameters, with vLLM's names and defaults, validated on construction.

The rule the engine follows is transformers' (`generate(num_beams=k, do_sample=False)` with its
defaults, early_stopping=False): see nanovllm/beam_search.py for it and where vLLM differs.
"""

from __future__ import annotations

from dataclasses import dataclass

from nanovllm.values.errors import InvalidRequestError, quote
from nanovllm.values.limits import MAX_BEAM_TOKENS, MAX_BEAM_WIDTH, MAX_LENGTH_PENALTY
from nanovllm.values.sampling_params import SamplingParams, _check_int, _check_range


@dataclass(frozen=True, slots=True)
class BeamSearchParams:
    beam_width: int
    max_tokens: int
    ignore_eos: bool = False
    # 0 (the default) scores the model's own distribution; T > 0 scores softmax(logits / T),
    # as vLLM's does (transformers ignores temperature when it does not sample).
    temperature: float = 0.0
    length_penalty: float = 1.0  # a finished beam scores cum_logprob / len(output) ** this

    def __post_init__(self) -> None:
        _check_int("beam_width", self.beam_width, 1, MAX_BEAM_WIDTH)
        _check_int("max_tokens", self.max_tokens, 1, MAX_BEAM_TOKENS)
        if not isinstance(self.ignore_eos, bool):
            raise InvalidRequestError(f"ignore_eos must be true or false, got "
                                      f"{quote(self.ignore_eos)}", "ignore_eos")
        _check_range("temperature", self.temperature, 0.0, None)
        _check_range("length_penalty", self.length_penalty, -MAX_LENGTH_PENALTY, MAX_LENGTH_PENALTY)

    @property
    def num_candidates(self) -> int:
        """Candidates each beam offers per step: 2k, as transformers keeps (so that k beams live
        on even when k of the best candidates end in EOS)."""
        return 2 * self.beam_width


    def sampling_params(self) -> SamplingParams:
        """What the engine's rules for any request read (n sequences, max_tokens, EOS), and the
        temperature the runner scores beams at; beams' tokens are chosen by the beam rule,
        never sampled."""
        return SamplingParams(n=self.beam_width, max_tokens=self.max_tokens,
                              ignore_eos=self.ignore_eos, temperature=self.temperature)
