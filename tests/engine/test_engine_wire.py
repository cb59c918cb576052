"""The engine process's frames (nanovllm/engine_core/wire.py): every output a real engine
produces, step by step, comes out of encode -> frame -> decode equal to itself, whatever the
request asks (several completions, logprobs, prompt logprobs, stop strings whose held-back
text shrinks, beam search).
"""

from __future__ import annotations

import marshal
import socket

import pytest

from nanovllm.engine_core import wire
from nanovllm.values.beam_search_params import BeamSearchParams
from nanovllm.values.outputs import RequestOutput
from nanovllm.values.sampling_params import SamplingParams


def frames_of(engine, requests: list) -> list:
    """Runs the requests to the end; each step's outputs as they left the engine, and as the
    other end of a socket pair decoded them."""
    ours, theirs = socket.socketpair()
    reader, decoder = wire.FrameReader(theirs), wire.OutputDecoder()
    sent: dict[str, list] = {}
    for request in requests:
        engine.add(request)
        decoder.start(request.request_id, request.prompt, request.prompt_token_ids)
    pairs = []
    while engine.has_unfinished_requests():
        outputs = engine.step()
        encoded = [wire.encode_output(out, sent.setdefault(out.request_id, []))
                   for out in outputs]
        ours.sendall(wire.encode((wire.OUTPUTS, wire.dumps(engine.get_stats()), encoded)))
        kind, stats, items = reader.read()
        assert kind == wire.OUTPUTS and wire.loads(stats) == engine.get_stats()
        pairs += zip(outputs, [decoder.decode(item) for item in items])
    ours.close()
    theirs.close()
    return pairs


def test_generated_outputs_cross_unchanged(make_engine):
    engine = make_engine()
    p = engine.processor
    requests = [
        p.process("plain", "Once upon a time", SamplingParams(max_tokens=12, temperature=0)),
        p.process("n2", "The", SamplingParams(n=2, max_tokens=9, temperature=1.0, seed=3,
                                              logprobs=3, prompt_logprobs=2)),
        # The held-back text of a possible stop string grows and is given up again.
        p.process("stops", "A", SamplingParams(max_tokens=20, temperature=1.0, seed=5,
                                               stop=[" the q", "e t", "zzzz"])),
        p.process_beam("beam", "Hello", BeamSearchParams(beam_width=2, max_tokens=6)),
    ]
    pairs = frames_of(engine, requests)
    assert {out.request_id for out, _ in pairs} == {"plain", "n2", "stops", "beam"}
    for out, back in pairs:
        assert isinstance(back, RequestOutput)
        assert back == out
    # The request with logprobs kept one entry per token, on the decoded side too.
    final = [back for out, back in pairs if out.request_id == "n2" and out.finished][0]
    assert [len(c.logprobs) for c in final.outputs] == [len(c.token_ids) for c in final.outputs]


def test_frames_are_plain_values():
    """marshal refuses anything but plain values: a frame can never carry an object."""
    with pytest.raises(ValueError):
        marshal.dumps((wire.OUTPUTS, object()))
    frame = wire.encode((wire.ABORT, ["a", "b"]))
    assert frame[wire.HEADER.size:] == marshal.dumps((wire.ABORT, ["a", "b"]))
