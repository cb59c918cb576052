"""Serving benchmark: load a running OpenAI-compatible server over HTTP and report what
`vllm bench serve` reports.

    nanovllm serve gpt2 --load-format dummy &           # in another terminal
    python scripts/benchmark_serving.py --max-concurrency 16 --num-prompts 64
    nanovllm bench serve --concurrency-sweep 1,16,64 --plot serving.png --json serving.json
    nanovllm bench serve --request-rate 4 --max-seconds 60     # Poisson arrivals, 4 req/s

Requests are streamed /v1/completions calls whose prompts are random token ids (so lengths are
exact, and no two prompts share a prefix the server could cache), with `ignore_eos` so every
request generates exactly its output length. The ids are drawn from the served model's
vocabulary, which /v1/models reports (`vocab_size`; --vocab-size for a server that does not).
Lengths are --input-len / --output-len, or uniform in [len*(1-r), len*(1+r)] with
--random-range-ratio r. Load is a fixed number of clients
(--max-concurrency), a Poisson request rate (--request-rate), both, or neither (all at once).
--num-prompts bounds the requests; --max-seconds stops sending new ones after that long (those
in flight finish and count).

Metrics, as vLLM defines them: TTFT = time to the first streamed chunk; TPOT = (latency - TTFT)
/ (output tokens - 1) per request; ITL = the gaps between successive chunks; E2EL = latency.
Throughputs divide completed requests' tokens by the wall time of the whole run. Output token
counts come from the final usage chunk (stream_options.include_usage). A failed request is
counted, its reason printed, and the command exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np

from nanovllm.scripts.bench_utils import environment, parse_int_list, write_json
from nanovllm.scripts.http_client import Client, new_event_loop
from nanovllm.scripts.serving_report import (
    BenchResult,
    RequestResult,
    format_result,
    format_sweep,
    plot,
    summarize,
)
from nanovllm.server.defaults import DEFAULT_HOST, DEFAULT_PORT, DEFAULT_URL, api_key_from_env

GPT2_VOCAB = 50257  # prompt ids for a server that does not report its vocabulary

# --------------------------------------------------------------------------- arguments


def add_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p = parser
    p.add_argument("--base-url", default=None, help=f"server URL (default {DEFAULT_URL})")
    p.add_argument("--host", default=DEFAULT_HOST, help="server host, if no --base-url")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="server port, if no --base-url")
    p.add_argument("--endpoint", default="/v1/completions", help="completions path")
    p.add_argument("--model", default=None, help="model name to request (default: the server's first)")
    p.add_argument("--api-key", default=None, help="bearer token (default $NANOVLLM_API_KEY, "
                                                   "$VLLM_API_KEY or $OPENAI_API_KEY)")
    p.add_argument("--num-prompts", type=int, default=100, help="requests to send (default 100)")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="stop sending new requests after this many seconds")
    p.add_argument("--max-concurrency", type=int, default=None,
                   help="requests in flight at most (default: no limit)")
    p.add_argument("--request-rate", type=float, default=math.inf,
                   help="requests per second, Poisson arrivals (default inf: all at once)")
    p.add_argument("--concurrency-sweep", type=parse_int_list, default=None, metavar="C,C,...",
                   help="run once per --max-concurrency value, e.g. 1,16,64")
    p.add_argument("--input-len", "--random-input-len", type=int, default=32,
                   help="prompt tokens (default 32)")
    p.add_argument("--output-len", "--random-output-len", type=int, default=128,
                   help="tokens to generate per request (default 128)")
    p.add_argument("--random-range-ratio", type=float, default=0.0,
                   help="lengths uniform in [len*(1-r), len*(1+r)] (default 0: fixed)")
    p.add_argument("--vocab-size", type=int, default=None,
                   help="prompt ids are drawn below this, the last id excluded (default: the "
                        f"server's vocabulary from /v1/models, else GPT-2's {GPT2_VOCAB})")
    p.add_argument("--ignore-eos", action=argparse.BooleanOptionalAction, default=True,
                   help="ask the server to ignore EOS (vLLM's extra field; default on)")
    p.add_argument("--seed", type=int, default=0, help="seed of prompts and arrivals")
    p.add_argument("--timeout", type=float, default=600.0, help="per-request timeout, seconds")
    p.add_argument("--json", nargs="?", const="-", default=None, metavar="FILE",
                   help="write results as JSON to FILE (stdout with no FILE)")
    p.add_argument("--plot", default=None, metavar="FILE.png",
                   help="draw throughput and latency against concurrency (needs matplotlib)")
    return parser


def check_args(args: argparse.Namespace) -> str | None:
    if args.num_prompts < 1:
        return "--num-prompts must be at least 1"
    if min(args.input_len, args.output_len) < 1:
        return "--input-len and --output-len must be at least 1"
    if not 0 <= args.random_range_ratio < 1:
        return "--random-range-ratio must be in [0, 1)"
    if args.request_rate <= 0:
        return "--request-rate must be positive"
    if args.max_concurrency is not None and args.max_concurrency < 1:
        return "--max-concurrency must be at least 1"
    if args.concurrency_sweep is not None and (not args.concurrency_sweep
                                               or min(args.concurrency_sweep) < 1):
        return "--concurrency-sweep needs positive integers, e.g. 1,16,64"
    if args.max_seconds is not None and args.max_seconds <= 0:
        return "--max-seconds must be positive"
    if args.vocab_size is not None and args.vocab_size < 2:
        return "--vocab-size must be at least 2"
    return None


def base_url(args: argparse.Namespace) -> str:
    return (args.base_url or f"http://{args.host}:{args.port}").rstrip("/")


def api_key(args: argparse.Namespace) -> str | None:
    return args.api_key or api_key_from_env("OPENAI_API_KEY")


# --------------------------------------------------------------------------- workload


@dataclass(slots=True)
class Prompt:
    token_ids: list[int]
    output_len: int


def make_prompts(args: argparse.Namespace, stream: int, count: int | None = None) -> list[Prompt]:
    """`count` (default --num-prompts) prompts of ids below --vocab-size (resolved by then);
    each `stream` gives different ones."""
    rng = np.random.default_rng([args.seed, stream])
    count = count or args.num_prompts
    r = args.random_range_ratio

    def lengths(n: int) -> np.ndarray:
        lo, hi = max(1, int(n * (1 - r))), max(1, int(n * (1 + r)))
        return rng.integers(lo, hi + 1, count)

    ins, outs = lengths(args.input_len), lengths(args.output_len)
    return [Prompt(rng.integers(0, args.vocab_size - 1, int(i)).tolist(), int(o))
            for i, o in zip(ins, outs)]


def request_body(args: argparse.Namespace, model: str, prompt: Prompt) -> dict:
    body = {"model": model, "prompt": prompt.token_ids, "max_tokens": prompt.output_len,
            "temperature": 0.0, "stream": True, "stream_options": {"include_usage": True}}
    if args.ignore_eos:
        body["ignore_eos"] = True  # vLLM's extension, also understood by nanovllm
    return body


# --------------------------------------------------------------------------- one request


async def send_request(client: Client, path: str, body: dict, timeout: float) -> RequestResult:
    """Streams one completion, timestamping every chunk."""
    result = RequestResult(ok=False, prompt_len=len(body["prompt"]))
    try:
        await asyncio.wait_for(_stream(client, path, body, result), timeout)
    except asyncio.TimeoutError:
        result.error = f"no complete answer within --timeout {timeout:g} s"
    except (OSError, ValueError) as e:  # the connection, or a chunk that is not JSON
        result.error = f"{type(e).__name__}: {e}"[:200]
    return result


async def _stream(client: Client, path: str, body: dict, result: RequestResult) -> None:
    result.start = last = time.perf_counter()
    chunks = 0
    async with client.request("POST", path, body) as response:
        if response.status != 200:
            result.error = _http_error(response.status, await response.read())
            return
        async for line in response.lines():  # to the end: the connection is then reusable
            if not line.startswith(b"data:") or (data := line[5:].strip()) == b"[DONE]":
                continue
            chunk = json.loads(data)
            if "error" in chunk:
                result.error = f"stream error: {_message(chunk)}"
                return
            now = time.perf_counter()
            if chunk.get("choices"):
                if chunks == 0:
                    result.ttft = now - result.start
                else:
                    result.itl.append(now - last)
                chunks, last = chunks + 1, now
            elif chunk.get("usage"):
                result.output_tokens = chunk["usage"].get("completion_tokens", 0)
    result.latency = time.perf_counter() - result.start
    result.output_tokens = result.output_tokens or chunks  # a server without usage chunks
    result.ok = chunks > 0
    result.error = "" if result.ok else "the stream ended without any output"


def _http_error(status: int, body: bytes) -> str:
    try:
        return f"HTTP {status}: {_message(json.loads(body))}"
    except ValueError:
        return f"HTTP {status}: {body[:200].decode(errors='replace')}"


def _message(obj: dict) -> str:
    err = obj.get("error", obj)
    msg = err.get("message", err) if isinstance(err, dict) else err
    return " ".join(str(msg).split())[:200]


# --------------------------------------------------------------------------- a run


async def run_load(client: Client, path: str, bodies: list[dict], concurrency: int | None,
                   rate: float, max_seconds: float | None, rng: np.random.Generator,
                   timeout: float, progress=None) -> tuple[list[RequestResult], float]:
    """Sends `bodies` with at most `concurrency` in flight and Poisson(rate) arrivals."""
    slots = asyncio.Semaphore(concurrency) if concurrency else None
    start = time.perf_counter()
    deadline = start + max_seconds if max_seconds else math.inf
    tasks = []

    async def one(body: dict) -> RequestResult:
        try:
            return await send_request(client, path, body, timeout)
        finally:
            if slots:
                slots.release()
            if progress:
                progress.update(1)

    for body in bodies:
        if math.isfinite(rate):
            await asyncio.sleep(rng.exponential(1.0 / rate))
        if slots:
            await slots.acquire()
        if time.perf_counter() >= deadline:
            if slots:
                slots.release()
            break
        tasks.append(asyncio.create_task(one(body)))
    results = list(await asyncio.gather(*tasks))
    return results, time.perf_counter() - start


# --------------------------------------------------------------------------- main


class SetupError(Exception):
    """Something to tell the user in one line before any load is sent."""


async def preflight(client: Client, url: str, args: argparse.Namespace) -> dict:
    """The server's model card; checks that the requested lengths fit its context."""
    async def get() -> tuple[int, bytes]:
        async with client.request("GET", "/v1/models") as response:
            return response.status, await response.read()

    try:
        status, content = await asyncio.wait_for(get(), args.timeout)
    except (OSError, asyncio.TimeoutError) as e:
        raise SetupError(f"no server at {url} ({type(e).__name__}: {e}); start one with: "
                         "nanovllm serve gpt2 --load-format dummy") from None
    if status != 200:
        raise SetupError(f"{url}/v1/models: {_http_error(status, content)}")
    cards = json.loads(content).get("data") or [{}]
    card = next((c for c in cards if c.get("id") == args.model), None) if args.model else cards[0]
    if card is None:
        raise SetupError(f"the server does not serve {args.model!r}; it serves "
                         f"{', '.join(str(c.get('id')) for c in cards)}")
    longest = int(args.input_len * (1 + args.random_range_ratio)) + \
        int(args.output_len * (1 + args.random_range_ratio))
    limit = card.get("max_model_len")
    if limit and longest > limit:
        raise SetupError(f"requests of up to {longest} tokens do not fit the server's "
                         f"max_model_len of {limit}; lower --input-len / --output-len")
    return card


def vocabulary(args: argparse.Namespace, card: dict) -> int:
    """Prompt ids are drawn below this: --vocab-size, else the server's, else GPT-2's."""
    if args.vocab_size:
        return args.vocab_size
    served = card.get("vocab_size")
    if isinstance(served, int) and served >= 2:
        return served
    print(f"note: the server does not report its vocabulary (vocab_size in /v1/models); prompt "
          f"ids are drawn below GPT-2's {GPT2_VOCAB:,} (--vocab-size to change it)",
          file=sys.stderr)
    return GPT2_VOCAB


async def bench(args: argparse.Namespace) -> tuple[dict, list[BenchResult]]:
    url = base_url(args)
    headers = {"Authorization": f"Bearer {key}"} if (key := api_key(args)) else {}
    client = Client(url, headers)
    try:
        card = await preflight(client, url, args)
        model = args.model or card["id"]
        args = argparse.Namespace(**{**vars(args), "vocab_size": vocabulary(args, card)})
        # One request first, like vLLM: a setup problem is one clear error, not N failures.
        test = make_prompts(args, stream=0, count=1)
        probe = await send_request(client, args.endpoint, request_body(args, model, test[0]),
                                   args.timeout)
        if not probe.ok:
            raise SetupError(f"the test request failed: {probe.error}")
        levels = args.concurrency_sweep or [args.max_concurrency]
        results = []
        for i, concurrency in enumerate(levels):
            results.append(await _one_level(client, args, model, concurrency, stream=i + 1))
    finally:
        await client.aclose()
    server = {"url": url, "model": model, "root": card.get("root"),
              "max_model_len": card.get("max_model_len"), "vocab_size": args.vocab_size}
    return server, results


async def _one_level(client: Client, args, model: str, concurrency: int | None, stream: int
                     ) -> BenchResult:
    from tqdm.auto import tqdm

    # Other prompts at every level: repeated ones would hit the server's prefix cache.
    bodies = [request_body(args, model, p) for p in make_prompts(args, stream)]
    label = f"concurrency {concurrency or 'unlimited'}"
    print(f"\n{label}: sending {len(bodies)} requests ...", file=sys.stderr, flush=True)
    with tqdm(total=len(bodies), desc=label, file=sys.stderr, leave=False,
              disable=not sys.stderr.isatty()) as bar:
        results, duration = await run_load(client, args.endpoint, bodies, concurrency,
                                           args.request_rate, args.max_seconds,
                                           np.random.default_rng([args.seed, stream, 1]),
                                           args.timeout, bar)
    summary = summarize(results, duration, concurrency, args.request_rate)
    out = sys.stderr if args.json == "-" else sys.stdout
    print(format_result(summary), file=out, flush=True)
    return summary


def run(args: argparse.Namespace) -> int:
    if problem := check_args(args):
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if args.plot and not _have_matplotlib():
        print("error: --plot needs matplotlib, which is not installed: "
              "pip install matplotlib (or pip install -e '.[plot]')", file=sys.stderr)
        return 1
    loop = new_event_loop()
    try:
        server, results = loop.run_until_complete(bench(args))
    except SetupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        loop.close()
    out = sys.stderr if args.json == "-" else sys.stdout
    if len(results) > 1:
        print(f"\n{format_sweep(results)}", file=out)
    if args.plot:
        plot(results, args.plot, f"{server['model']} at {server['url']}: "
                                 f"{args.input_len} -> {args.output_len} tokens")
        print(f"wrote {args.plot}", file=sys.stderr)
    if args.json:
        _write_json(args, server, results)
    if failed := sum(b.failed for b in results):
        sent = sum(b.completed + b.failed for b in results)
        print(f"error: {failed} of {sent} requests failed: {why_failed(results)}", file=sys.stderr)
        return 1
    return 0


def why_failed(results: list[BenchResult]) -> str:
    """The failures' reasons, most frequent first, each with its count."""
    errors: dict[str, int] = {}
    for b in results:
        for error, n in b.errors.items():
            errors[error] = errors.get(error, 0) + n
    ranked = sorted(errors.items(), key=lambda e: -e[1])
    return "; ".join(f"{n} x {error.rstrip('.')}" for error, n in ranked[:3]) + \
        (f"; and {len(ranked) - 3} other reasons" if len(ranked) > 3 else "")


def _have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _write_json(args, server: dict, results: list[BenchResult]) -> None:
    ours = {a.dest for a in add_args(argparse.ArgumentParser())._actions} - {"help", "api_key"}
    settings = {k: v for k, v in vars(args).items() if k in ours}
    if math.isinf(settings.get("request_rate", 0)):
        settings["request_rate"] = "inf"  # JSON has no infinity
    data = {"environment": environment(), "server": server, "settings": settings,
            "results": [_json_safe(asdict(b)) for b in results]}
    write_json(data, args.json)


def _json_safe(d: dict) -> dict:
    return {k: ("inf" if isinstance(v, float) and math.isinf(v) else v) for k, v in d.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmark_serving", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    return run(add_args(parser).parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
