"""What every API shares between HTTP and the engine: the app's context, submitting engine
requests, the stream of their outputs, waiting for the final ones (or the client leaving),
engine errors as API errors, usage, and server-sent events (the response that streams them,
aborting its request when the client leaves).

An API (server/api/<name>/) validates its body into engine requests (or hands it to the chat
path, server/chat/run.py, which does), calls `submit`, and renders the outputs: whole
(`final_outputs`, `final_response`) or streamed (`streamed`).

Outputs are cumulative, so when a handler falls behind, the queued outputs of an engine
request are coalesced into the latest one. RequestStream.close() aborts whatever is still
unfinished; every handler calls it in a `finally`, which is how a disconnected client frees its
KV blocks at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Annotated

from fastapi import Depends, Request
from fastapi.responses import JSONResponse
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from nanovllm import GrammarCompiler, InvalidRequestError, SamplingParams
from nanovllm.engine_client import EngineClient, EngineDeadError, QueueSink, RequestAborted
from nanovllm.server.api.responses.store import ResponseStore
from nanovllm.server.chat.reasoning import ReasoningParser
from nanovllm.server.chat.result import Usage
from nanovllm.server.chat.template import ChatTemplate
from nanovllm.server.chat.tool_calls import ToolParser
from nanovllm.server.errors import APIError, bad_request, internal_error, invalid_request
from nanovllm.server.field_policy import IgnoredFields
from nanovllm.server.lora import ServedAdapters
from nanovllm.server.metrics import RequestTracker, ServerMetrics
from nanovllm.server.middleware import ServerLoad
from nanovllm.server.models.context import ModelContext
from nanovllm.server.models.pool import ModelPool
from nanovllm.values.errors import ContextLengthError, QueueFullError
from nanovllm.values.limits import ServerLimits
from nanovllm.values.lora_request import LoRARequest
from nanovllm.values.request import EngineRequest

logger = logging.getLogger(__name__)

BIG_PROMPT_CHARS = 4_000  # tokenizing more than this takes long enough to matter
# What a client refused for a full queue is told to wait: about the time a few steps take to
# finish some sequences; clients back off further on their own if it is still full.
RETRY_AFTER_SECONDS = 1


# The app's context: per-app state (reached through request.app.state, never a global).


@dataclass(slots=True)
class ServerContext:
    """The server-wide state, and (in a request's view of it, `model_for`) the model the
    request named: its engine, chat template, grammar compiler, ... (`engine`, `chat_template`,
    ... read the bound model's)."""

    models: ModelPool  # the served models: which are loaded, and loading them
    metrics: ServerMetrics
    limits: ServerLimits = field(default_factory=ServerLimits)
    created: int = field(default_factory=lambda: int(time.time()))
    # --return-tokens-as-token-ids: every request's logprobs name tokens "token_id:N".
    return_tokens_as_token_ids: bool = False
    server_load: ServerLoad = field(default_factory=ServerLoad)  # GET /load
    # --enable-auto-tool-choice --tool-call-parser: the parser of tool_choice "auto" (None: off)
    tool_parser: type[ToolParser] | None = None
    reasoning_parser: ReasoningParser | None = None  # --reasoning-parser
    # --structured-outputs-config '{"enable_in_reasoning": true}': grammars hold the reasoning too
    structured_in_reasoning: bool = False
    # POST /v1/responses with store: what previous_response_id and GET /v1/responses/{id} read
    # (sized by `limits` unless given).
    response_store: ResponseStore | None = None
    # The fields the front ends accepted and ignored, each logged once (server/field_policy.py).
    ignored_fields: IgnoredFields = field(default_factory=IgnoredFields)
    adapters: ServedAdapters | None = None  # --enable-lora: LoRA adapters by name (server/lora.py)
    model: ModelContext | None = None  # a request's view: the model it named (model_for)
    adapter: LoRARequest | None = None  # ... and the LoRA adapter it named (None: none)

    def __post_init__(self) -> None:
        if self.response_store is None:
            self.response_store = ResponseStore(self.limits.max_stored_responses,
                                                self.limits.max_stored_response_bytes)

    async def model_for(self, name: str | None, keep_alive: float | None = None
                        ) -> ServerContext:
        """This context bound to the model named `name` (omitted: the first one served),
        loaded if it was not; the request holds the model until its response was sent (then
        it stays loaded `keep_alive` seconds, the server's --keep-alive if None). A LoRA
        adapter's name binds its base model and the adapter. A 404 for a model this server does
        not serve, a 503 naming it if it fails to load."""
        adapter = self.adapters.by_name.get(name) if self.adapters and name else None
        if adapter:  # a LoRA adapter runs on its base model
            name = self.adapters.base
        if self.model is not None and name in (None, self.model.name) and keep_alive is None:
            # (already bound: the route's own call, then the chat path's)
            return self if adapter == self.adapter else replace(self, adapter=adapter)
        return replace(self, model=await self.models.acquire(name, keep_alive), adapter=adapter)

    def _bound(self) -> ModelContext:
        if self.model is None:
            raise RuntimeError("no model chosen: the route must call model_for first")
        return self.model

    @property
    def engine(self) -> EngineClient:
        return self._bound().engine

    @property
    def model_name(self) -> str:
        """The bound base model's name (what metrics, templates and the pool know it by)."""
        return self._bound().name

    @property
    def adapter_id(self) -> int:
        """The engine's id of the LoRA adapter the request named (0: none)."""
        return self.adapter.lora_int_id if self.adapter else 0

    @property
    def served_name(self) -> str:
        """The name the request asked for, which responses echo as their "model": the LoRA
        adapter's if it named one (as vLLM does), else the model's."""
        return self.adapter.lora_name if self.adapter else self.model_name

    @property
    def model_root(self) -> str:
        return self._bound().root

    @property
    def chat_template(self) -> ChatTemplate | None:
        return self._bound().chat_template

    @property
    def tokenizer_info(self) -> dict | None:
        return self._bound().tokenizer_info

    @property
    def grammar_compiler(self) -> GrammarCompiler | None:
        return self._bound().grammar_compiler

    def apply_defaults(self, req) -> None:
        """The operator's defaults for the request fields a server flag turns on."""
        if self.return_tokens_as_token_ids:
            req.return_tokens_as_token_ids = True


def get_ctx(request: Request) -> ServerContext:
    return request.app.state.ctx


Ctx = Annotated[ServerContext, Depends(get_ctx)]  # route parameter type: the app's context


# Before submitting.


async def off_loop_if_big(chars: int, fn, *args, heavy: bool = False):
    """fn(*args), in a worker thread if the prompt is big (or the work `heavy`: compiling a
    grammar): it would stall every other request on the event loop; small prompts are cheaper
    to tokenize inline."""
    if heavy or chars > BIG_PROMPT_CHARS:
        return await asyncio.to_thread(fn, *args)
    return fn(*args)


def new_request_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


@contextmanager
def context_length_in_terms_of(prompt_field: str, length_field: str | None) -> Iterator[None]:
    """The engine's ContextLengthError said in the API's own fields: its prompt is
    `prompt_field` ("prompt", chat's "messages"), and the completion's length the field the
    client set it with (`length_field`), or, when it set none, the API's default."""
    try:
        yield
    except ContextLengthError as exc:
        message, param = context_length_message(exc, prompt_field, length_field)
        raise bad_request(message, param) from exc  # the numbers, for a front end


def context_length_message(exc: ContextLengthError, prompt_field: str,
                           length_field: str | None) -> tuple[str, str]:
    """(message, param) of a too-long request, naming only fields the client sent."""
    head = f"This model's maximum context length is {exc.limit} tokens. However, "
    prompt = "your prompt has" if prompt_field == "prompt" else \
        f"your `{prompt_field}` (as the chat template renders them) have"
    shorten = f"Please reduce the length of the {prompt_field}"
    if exc.prompt_chars is not None:
        return (f"{head}{prompt} {exc.prompt_chars} characters, more than {exc.limit - 1} tokens "
                f"of at most {exc.token_chars} characters each can hold. {shorten}.", prompt_field)
    n, most = exc.prompt_tokens, exc.max_tokens
    if n >= exc.limit:
        return f"{head}{prompt} {n} tokens, which leaves no room for a completion. {shorten}.", \
            prompt_field
    if most is not None and n + most > exc.limit:
        if length_field is None:  # the API's default (completions: 16), not the client's request
            return (f"{head}{prompt} {n} tokens, and the default completion length of {most} "
                    f"tokens (`max_tokens` was not set) would make {n + most}. {shorten}, or set "
                    f"`max_tokens` to at most {exc.limit - n}.", prompt_field)
        return (f"{head}you requested {n + most} tokens ({n} in the {prompt_field}, {most} in the "
                f"completion). {shorten} or `{length_field}` (at most {exc.limit - n}).",
                length_field)
    return (f"{head}`min_tokens` {exc.min_tokens} after {n} tokens of {prompt_field} needs "
            f"{n + exc.min_tokens}. Please reduce min_tokens or the length of the {prompt_field}.",
            "min_tokens")


def check_response_size(params: SamplingParams, prompts: list[EngineRequest], echo: bool,
                        limits: ServerLimits, max_model_len: int) -> None:
    """With logprobs, the response carries 1 + logprobs entries for every token (echoed prompt
    tokens included, in every choice), and with prompt_logprobs 1 + prompt_logprobs for every
    prompt token of every choice: refuse a request whose response could pass the limit."""
    if params.logprobs is None and params.prompt_logprobs is None:
        return

    def most_tokens(p: EngineRequest) -> int:
        n_prompt = len(p.prompt_token_ids)
        new = params.max_tokens if params.max_tokens is not None else max_model_len - n_prompt
        return new + (n_prompt if echo else 0)

    entries, param = 0, "prompt_logprobs"
    if params.prompt_logprobs is not None:
        entries += params.n * sum(len(p.prompt_token_ids) for p in prompts) * (1 + params.prompt_logprobs)
    if params.logprobs is not None:
        entries += params.n * sum(map(most_tokens, prompts)) * (1 + params.logprobs)
        param = "logprobs"
    if entries > limits.max_logprob_entries_per_response:
        raise bad_request(
            f"This response could carry {entries} logprobs (tokens x (1 + logprobs)); this "
            f"server sends at most {limits.max_logprob_entries_per_response} per response. Lower "
            "logprobs, prompt_logprobs, n or max_tokens, or turn off echo.", param)


# Submitting, and the stream of outputs.


class RequestStream:
    """The asyncio side of one HTTP request: its engine requests (one per prompt, `tag` is the
    prompt's index) and their outputs."""

    def __init__(self, engine: EngineClient, request_id: str, requests: list[EngineRequest],
                 n: int, tracker: RequestTracker | None = None) -> None:
        self._engine = engine
        self._queue: asyncio.Queue = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        self.request_id = request_id
        self.requests = requests
        self.request_ids = [r.request_id for r in requests]
        self.n = n  # choices per prompt
        self._tracker = tracker
        self._unfinished = set(range(len(requests)))
        self._pending: dict = {}
        self._closed = False

    @property
    def done(self) -> bool:
        return not self._unfinished and not self._pending

    async def submit(self) -> None:
        """Hand every engine request to the engine; returns once all were taken (raises why
        one was not: the caller closes the stream, which withdraws the others)."""
        accepted = [self._engine.add_request(r, QueueSink(self._loop, self._queue, tag))
                    for tag, r in enumerate(self.requests)]
        for future in accepted:
            await asyncio.wrap_future(future)

    async def next_batch(self) -> dict:
        """Wait for new outputs; returns {tag: latest RequestOutput}. Raises pushed errors."""
        if not self._pending:
            self._absorb([await self._queue.get()])
        items = []
        while not self._queue.empty():
            items.append(self._queue.get_nowait())
        self._absorb(items)
        batch, self._pending = self._pending, {}
        return batch

    async def final_outputs(self) -> dict:
        """Wait until every engine request finished; returns {tag: final RequestOutput}."""
        final = {}
        while not self.done:
            final.update(await self.next_batch())
        return final

    def _absorb(self, items: list) -> None:
        for tag, item in items:
            if isinstance(item, BaseException):
                self._unfinished.discard(tag)
                raise item
            self._pending[tag] = item
            if item.finished:
                self._unfinished.discard(tag)
            if self._tracker is not None:
                self._tracker.observe(tag, item)

    def close(self) -> None:
        """Abort every unfinished engine request (idempotent; safe after errors)."""
        if self._closed:
            return
        self._closed = True
        if self._unfinished:
            self._engine.abort([self.request_ids[t] for t in sorted(self._unfinished)])
            if self._tracker is not None:
                for tag in self._unfinished:
                    self._tracker.aborted(tag, self.n)
            self._unfinished.clear()


def engine_error(exc: BaseException) -> APIError:
    """Map what the engine pushes into a request onto an HTTP error."""
    if isinstance(exc, InvalidRequestError):
        return invalid_request(exc)
    if isinstance(exc, QueueFullError):  # the server is busy, not broken: try again soon
        return APIError(str(exc), 429, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
    if isinstance(exc, EngineDeadError):  # its text is the engine's exception: for the log only
        return APIError("The engine is dead; the server log says why.", 503)
    if isinstance(exc, RequestAborted):
        return APIError(str(exc), 503)
    return internal_error("the engine failed a request", exc)


async def submit(ctx: ServerContext, request_id: str, requests: list[EngineRequest],
                 n: int) -> RequestStream:
    """Hands the engine requests to the engine; returns once all were taken (else an APIError)."""
    stream = RequestStream(ctx.engine, request_id, requests, n,
                           ctx.metrics.for_model(ctx.model_name).tracker(
                               requests[0].pooling or requests[0].params))
    try:
        await stream.submit()
    except asyncio.CancelledError:
        stream.close()
        raise
    except Exception as exc:
        stream.close()
        raise engine_error(exc) from exc
    return stream


def usage(prompts: list[EngineRequest], results: dict, count_generated: bool = True) -> Usage:
    """Token counts: each prompt once, every choice's generated tokens, and how many prompt
    tokens the prefix cache supplied."""
    completion_tokens = sum(len(o.token_ids) for r in results.values() for o in r.outputs
                            ) if count_generated else 0
    return Usage(sum(len(p.prompt_token_ids) for p in prompts), completion_tokens,
                 sum(r.num_cached_tokens for r in results.values()))


# A whole answer at once.


async def wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(receive: Receive, work: Awaitable) -> asyncio.Future | None:
    """Run `work` until it is done or the client disconnects, whichever comes first: its done
    task (`result()` gives its value or raises its error), or None once the client left (the
    work is then cancelled). The disconnect is heard while the work waits for the engine, not
    at its next write."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(wait_for_disconnect(receive))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
        return task if task.done() else None
    finally:
        task.cancel()
        gone.cancel()


async def final_outputs(raw: Request, stream: RequestStream) -> dict | None:
    """Every engine request's final output, or None if the client went away first; either way
    the stream is closed (an unfinished request is aborted at once). Engine errors become API
    errors."""
    try:
        done = await unless_disconnected(raw.receive, stream.final_outputs())
        if done is None:
            logger.info("client disconnected; aborting %s", stream.request_id)
            return None
        try:
            return done.result()
        except Exception as exc:
            raise engine_error(exc) from exc
    finally:
        stream.close()


async def final_response(raw: Request, stream: RequestStream,
                         build: Callable[[int, dict], dict], off_loop: bool = False) -> JSONResponse:
    """Non-streaming: wait for every choice (or abort at once if the client goes away: 499),
    then answer `build(created, {tag: final output})`, off the event loop if `off_loop` (a
    body with logprobs can be megabytes)."""
    created = int(time.time())
    results = await final_outputs(raw, stream)
    if results is None:
        return JSONResponse({}, status_code=499)

    def render() -> JSONResponse:
        return JSONResponse(build(created, results))

    return await asyncio.to_thread(render) if off_loop else render()


# Server-sent events: `data: {json}\n\n` (OpenAI's, ending with `data: [DONE]\n\n`), or each
# with its name, `event: name\ndata: {json}\n\n` (Responses' and Anthropic's).


def sse(obj: dict | str) -> str:
    return f"data: {obj if isinstance(obj, str) else _json(obj)}\n\n"


def named_event(name: str, data: dict) -> str:
    return f"event: {name}\ndata: {_json(data)}\n\n"


def _json(obj: dict) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


class SSEResponse(StreamingResponse):
    """A StreamingResponse that stops as soon as the client leaves, even while it waits for
    the engine's next output, and runs `on_close` however the stream ends (done, error, gone).

    Starlette itself listens for the disconnect only under ASGI servers older than spec 2.4;
    under newer ones a stream would notice a closed connection at its next write, which a
    request queued behind others or a paused engine does not make."""

    media_type = "text/event-stream"

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], None]) -> None:
        super().__init__(content, headers={"Cache-Control": "no-cache"})
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            done = await unless_disconnected(receive, self.stream_response(send))
            if done is not None:
                done.result()  # the stream's own error, if any
        except OSError:  # an ASGI 2.4 server's word for a closed connection at a write
            pass
        finally:
            self._on_close()


@dataclass(slots=True)
class ChoiceState:
    """What was already sent for one streamed choice."""

    text_len: int = 0  # of the engine's text (an echoed prompt not included)
    num_tokens: int = 0
    offset: int = 0  # the completions API's text_offset of the next logprobs token
    started: bool = False
    finished: bool = False


def streamed(stream: RequestStream, events: AsyncIterator[str]) -> SSEResponse:
    """The response of a streamed request: its events; leaving early aborts it at once."""
    return SSEResponse(events, on_close=stream.close)
