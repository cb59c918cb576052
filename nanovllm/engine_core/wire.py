"""What crosses between the API server's process and its engine process, and how it is spelled.

A frame is a 4-byte length and a `marshal`-ed tuple whose first item says what it is. marshal
reads and writes plain values (ints, floats, strings, bytes, tuples, lists) in C, with nothing
to look up by name; both ends are the same interpreter, which is all it asks. What is rare and
rich (a request as it is added, a snapshot for the web page, an exception, the stats) rides
inside a frame as pickle bytes, once per request or per step; the tokens of a step never do.

A generating request's outputs are cumulative (its whole text, every token so far), and step
after step sending them whole would grow with the square of the output. `encode_output` sends
each completion's news since the last frame (the text kept and what follows it, the new tokens,
the new logprobs); `OutputDecoder` holds the request's output on the server's side and rebuilds
each cumulative RequestOutput from them.
"""

from __future__ import annotations

import io
import marshal
import pickle
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from nanovllm.values.outputs import CompletionOutput, Logprob, RequestMetrics, RequestOutput

if TYPE_CHECKING:
    from nanovllm.async_engine import AsyncEngine
    from nanovllm.input_processor import InputProcessor
    from nanovllm.inspection import Inspector
    from nanovllm.stats import EngineStats

HEADER = struct.Struct("<I")  # the length of the marshal-ed body that follows

# Frame kinds, the first item of each frame. Server -> engine:
START = 0        # (START, pickled EngineConfig, step mode enabled, log level): the first
ADD = 1          # (ADD, request_id, pickled EngineRequest)
ABORT = 2        # (ABORT, [request_id, ...])
ABORT_ALL = 3    # (ABORT_ALL, reason)
CALL = 4         # (CALL, call_id, method name, pickled args): the web page's inspection
STOP = 5         # (STOP,)
# Engine -> server:
READY = 10       # (READY, True, pickled EngineInfo) or (READY, False, pickled exception)
ACCEPTED = 11    # (ACCEPTED, request_id)
REFUSED = 12     # (REFUSED, request_id, pickled exception)
OUTPUTS = 13     # (OUTPUTS, pickled EngineStats, [encoded output, ...]): one step's
ENDED = 14       # (ENDED, request_id, pickled exception): the request ends with it
RESULT = 15      # (RESULT, call_id, ok, pickled result or exception)
STATS = 16       # (STATS, pickled EngineStats): they changed without a step (an add, a pause)


@dataclass(slots=True)
class EngineInfo:
    """What the server holds of a loaded engine: its EngineClient's constant members, and the
    model's shape for the web page."""
    processor: InputProcessor  # with the tokenizer: the server checks and encodes requests
    max_model_len: int
    model_path: str
    is_dummy: bool
    stats: EngineStats
    shape: tuple[int, int, int]  # n_layer, n_head, num_kv_heads

    @classmethod
    def of(cls, client: AsyncEngine, inspector: Inspector) -> EngineInfo:
        return cls(client.processor, client.max_model_len, client.model_path, client.is_dummy,
                   client.stats, (inspector.n_layer, inspector.n_head, inspector.num_kv_heads))


def encode(message: tuple) -> bytes:
    body = marshal.dumps(message)
    return HEADER.pack(len(body)) + body


def dumps(value: object) -> bytes:
    return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


loads = pickle.loads

# A request's grammar (runner/structured.CompiledGrammar) holds llguidance's view of the
# vocabulary, which does not pickle; it crosses as this name, and the engine process puts its
# own in its place (built once over the same tokenizer).
LL_TOKENIZER = "ll_tokenizer"


def dumps_request(request: object) -> bytes:
    buffer = io.BytesIO()
    _RequestPickler(buffer, pickle.HIGHEST_PROTOCOL).dump(request)
    return buffer.getvalue()


def loads_request(data: bytes, ll_tokenizer: Callable[[], object]) -> object:
    unpickler = pickle.Unpickler(io.BytesIO(data))
    unpickler.persistent_load = lambda pid: ll_tokenizer() if pid == LL_TOKENIZER else None
    return unpickler.load()


class _RequestPickler(pickle.Pickler):
    def persistent_id(self, obj: object) -> str | None:
        return LL_TOKENIZER if type(obj).__name__ == "LLTokenizer" else None


class FrameReader:
    """Reads whole frames off a blocking socket; None once the other end closed it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()

    def read(self) -> tuple | None:
        while True:
            if len(self.buffer) >= HEADER.size:
                (size,) = HEADER.unpack_from(self.buffer)
                end = HEADER.size + size
                if len(self.buffer) >= end:
                    message = marshal.loads(self.buffer[HEADER.size:end])
                    del self.buffer[:end]
                    return message
            try:
                chunk = self.sock.recv(1 << 20)
            except OSError:  # reset by a process that died
                return None
            if not chunk:
                return None
            self.buffer += chunk


# ---- one step's outputs ----------------------------------------------------------------------
# A generating request's output is (request_id, finished, num_cached_tokens, metrics or None,
# pickled prompt logprobs or None, [completion delta, ...]); a completion delta is
# (index, text kept, text added, token ids added, cumulative logprob, finish reason,
#  stop reason, logprobs added or None), a logprob entry [(token_id, logprob, rank, text), ...].
# A pooling request's output is (request_id, pickled output): it comes once, when it finishes.


@dataclass(slots=True)
class _Sent:
    """What the other side holds of one completion."""
    text: str = ""
    num_tokens: int = 0
    num_logprobs: int = 0


def encode_output(out, sent: list[_Sent]) -> tuple:
    """The engine side: `out` as news since what `sent` (its request's, kept by its sink)
    says the other side holds."""
    if not isinstance(out, RequestOutput):
        return (out.request_id, dumps(out))
    first = not sent
    deltas = [_delta(sent, c) for c in out.outputs]
    m = out.metrics
    return (out.request_id, out.finished, out.num_cached_tokens,
            None if m is None else (m.arrival_time, m.first_scheduled_time,
                                    m.first_token_time, m.last_token_time),
            dumps(out.prompt_logprobs) if first and out.prompt_logprobs else None, deltas)


def _delta(sent: list[_Sent], c: CompletionOutput) -> tuple:
    while len(sent) <= c.index:
        sent.append(_Sent())
    s = sent[c.index]
    keep = len(s.text) if c.text.startswith(s.text) else _common_prefix(s.text, c.text)
    tokens = c.token_ids[s.num_tokens:]
    logprobs = None
    if c.logprobs is not None:
        logprobs = [[(t, lp.logprob, lp.rank, lp.decoded_token) for t, lp in entry.items()]
                    for entry in c.logprobs[s.num_logprobs:]]
        s.num_logprobs = len(c.logprobs)
    s.text, s.num_tokens = c.text, len(c.token_ids)
    return (c.index, keep, c.text[keep:], tokens, c.cumulative_logprob, c.finish_reason,
            c.stop_reason, logprobs)


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass(slots=True)
class _Held:
    """The server side's copy of one generating request's output."""
    prompt: str | None
    prompt_token_ids: list[int]
    prompt_logprobs: list | None = None
    completions: dict[int, CompletionOutput] = field(default_factory=dict)


class OutputDecoder:
    """The server side: rebuilds cumulative RequestOutputs from the engine's deltas."""

    def __init__(self) -> None:
        self._held: dict[str, _Held] = {}

    def start(self, request_id: str, prompt: str | None, prompt_token_ids: list[int]) -> None:
        self._held[request_id] = _Held(prompt, prompt_token_ids)

    def forget(self, request_id: str) -> None:
        self._held.pop(request_id, None)

    def decode(self, item: tuple):
        """The output `item` encodes; None for a request nobody holds (aborted meanwhile)."""
        if len(item) == 2:
            self._held.pop(item[0], None)
            return loads(item[1])
        rid, finished, cached, metrics, prompt_logprobs, deltas = item
        held = self._held.pop(rid, None) if finished else self._held.get(rid)
        if held is None:
            return None
        if prompt_logprobs is not None:
            held.prompt_logprobs = loads(prompt_logprobs)
        outputs = [self._apply(held, delta) for delta in deltas]
        return RequestOutput(rid, held.prompt, held.prompt_token_ids,
                             None if held.prompt_logprobs is None else list(held.prompt_logprobs),
                             outputs, finished, cached,
                             None if metrics is None else RequestMetrics(*metrics))

    @staticmethod
    def _apply(held: _Held, delta: tuple) -> CompletionOutput:
        index, keep, text, tokens, cumulative, finish, stop, logprobs = delta
        c = held.completions.get(index)
        if c is None:
            c = held.completions[index] = CompletionOutput(
                index, "", [], None, None if logprobs is None else [])
        c.text = c.text[:keep] + text
        c.token_ids.extend(tokens)
        if logprobs is not None:
            c.logprobs.extend({t: Logprob(lp, rank, s) for t, lp, rank, s in entry}
                              for entry in logprobs)
        # Lists of its own, as each of the engine's outputs has.
        return CompletionOutput(index, c.text, list(c.token_ids), cumulative,
                                None if c.logprobs is None else list(c.logprobs), finish, stop)
