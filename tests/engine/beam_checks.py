"""transformers' beam search as the reference: its beams, and a check that ours equal them."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nanovllm.beam_search import BeamScorer

CUM_LOGPROB_TOLERANCE = 1e-4


@dataclass(frozen=True, slots=True)
class RefBeam:
    tokens: list[int]     # generated tokens only (EOS included when it ended on one)
    cum_logprob: float
    score: float


def hf_beams(hf, prompt: list[int], width: int, max_tokens: int, length_penalty: float = 1.0,
             eos_token_id: int | list[int] | None = None) -> list[RefBeam]:
    """`generate(num_beams=width, num_return_sequences=width, do_sample=False)`, best first.
    `eos_token_id` overrides the checkpoint's (to put a frequent token in EOS's place); a list
    (as a Llama generation_config.json gives) ends a beam on any of its ids."""
    eos = hf.config.eos_token_id if eos_token_id is None else eos_token_id
    eos_ids = eos if isinstance(eos, list) else [eos]
    with torch.no_grad():
        out = hf.generate(torch.tensor([prompt]),
                          attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                          num_beams=width, num_return_sequences=width, do_sample=False,
                          max_new_tokens=max_tokens, length_penalty=length_penalty,
                          eos_token_id=eos, pad_token_id=eos_ids[0], early_stopping=False,
                          output_scores=True, return_dict_in_generate=True)
    if width == 1:  # transformers decodes greedily: score its one sequence from its logits
        tokens = out.sequences[0, len(prompt):].tolist()
        ends = [i for i, t in enumerate(tokens) if t in eos_ids]
        if ends:
            tokens = tokens[:ends[0] + 1]
        cum = sum(float(torch.log_softmax(s[0].float(), -1)[t]) for s, t in zip(out.scores, tokens))
        return [RefBeam(tokens, cum, cum / len(tokens) ** length_penalty)]
    beams = []
    for seq, score, indices in zip(out.sequences, out.sequences_scores, out.beam_indices):
        length = int((indices != -1).sum())  # the beam's own length (shorter ones are padded)
        beams.append(RefBeam(seq[len(prompt):len(prompt) + length].tolist(),
                             float(score) * length ** length_penalty, float(score)))
    return beams


def scorer_beams(hf, prompt: list[int], width: int, max_tokens: int, length_penalty: float = 1.0,
                 eos_token_id: int | None = None) -> list[RefBeam]:
    """Our BeamScorer, fed transformers' logprobs by a full forward pass per beam per step."""
    eos = hf.config.eos_token_id if eos_token_id is None else eos_token_id
    scorer = BeamScorer(width, max_tokens, tuple(eos) if isinstance(eos, list) else (eos,),
                        length_penalty)
    beams: list[tuple[list[int], float]] = [([], 0.0)]  # (generated tokens, cum logprob)
    finished: dict[int, list[int]] = {}
    while not scorer.done:
        offers = []
        for tokens, _ in beams:
            with torch.no_grad():
                logits = hf(torch.tensor([prompt + tokens])).logits[0, -1]
            top = torch.log_softmax(logits.float(), -1).topk(2 * width)
            offers.append((top.indices.tolist(), top.values.tolist()))
        step = scorer.next_round([cum for _, cum in beams], offers, len(beams[0][0]))
        for h in step.new_hypotheses:
            finished[id(h)] = beams[h.candidate.parent][0] + [h.candidate.token]
        beams = [(beams[c.parent][0] + [c.token], c.cum_logprob) for c in step.live]
    return [RefBeam(finished[id(h)], h.candidate.cum_logprob, h.score) for h in scorer.hypotheses]


def assert_same_beams(ours: list[RefBeam], ref: list[RefBeam], what: str = "") -> None:
    """Token for token, best first, cum logprobs within CUM_LOGPROB_TOLERANCE."""
    assert len(ours) == len(ref), f"{what}: {len(ours)} beams, transformers {len(ref)}"
    for i, (a, b) in enumerate(zip(ours, ref)):
        assert a.tokens == b.tokens, f"{what}: beam {i} differs\n ours {a}\n ref  {b}"
        assert abs(a.cum_logprob - b.cum_logprob) < CUM_LOGPROB_TOLERANCE, f"{what}: beam {i}"
