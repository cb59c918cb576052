"""Replay the hostile-traffic attacks against a server while a small probe request measures what
everyone else sees: `python -m nanovllm.scripts.lab.hostile_traffic [--url URL | --model MODEL]`.

Without --url it starts `nanovllm serve MODEL` (default: a 2-layer random-weight GPT-2 written to
a temporary directory) on a free port. It times the probe alone (the baseline), then replays each
attack from a few client processes at once while the probe runs, and prints one row per attack:
what was sent, the status codes the attacker got, and the probe's p50 during the attack over its
baseline. Timings depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter

import httpx

PROBE = {"prompt": "Hello, my name is", "max_tokens": 4, "temperature": 0}
BIG = 1_000_000


def attacks() -> list[tuple[str, str, str, bytes, bool]]:
    """(row, what is sent, path, body, chunked); bodies are encoded once, so that attacking
    costs the attacker little CPU and the probe measures the server."""
    def completion(**body) -> bytes:
        return json.dumps({"prompt": "Hi", "max_tokens": 16, **body}).encode()

    oversized = json.dumps({"prompt": "a" * 8_000_000}).encode()
    c, t = "/v1/completions", "/tokenize"
    return [
        ("1", "1M-char prompt, /v1/completions", c, completion(prompt="a" * BIG), False),
        ("1", "1M-char prompt, /tokenize", t, json.dumps({"prompt": "a" * BIG}).encode(), False),
        ("1", "100K-char allowed prompt, /tokenize", t,
         json.dumps({"prompt": "word " * 20_000}).encode(), False),
        ("3", "stop: 1000 x 1000 chars, n=4", c, completion(stop=["x" * 1000] * 1000, n=4), False),
        ("4", "32 prompts x n=128", c, completion(prompt=["Hi there"] * 32, n=128), False),
        # The largest request the limits let through: its sequences share the batch fairly.
        ("4", "4 prompts x n=64 (256 sequences)", c,
         completion(prompt=["Hi there"] * 4, n=64), False),
        ("4", "8 MB body (Content-Length)", c, oversized, False),
        ("4", "8 MB body (chunked)", c, oversized, True),
        ("5", "echo + logprobs=20, n=128", c,
         completion(prompt=[7] * 200, echo=True, logprobs=20, n=128), False),
        ("6", "logit_bias on every id, n=16", c,
         completion(logit_bias={str(i): 1 for i in range(50257)}, n=16), False),
        ("6", "logit_bias on 300 ids, n=16", c,
         completion(logit_bias={str(i): 1 for i in range(300)}, n=16), False),
        ("7", "lone surrogate prompt", c, b'{"prompt": "\\ud800"}', False),
        ("7", "lone surrogate model", c, b'{"prompt": "a", "model": "\\ud800"}', False),
        ("7", "lone surrogate, /tokenize", t, b'{"prompt": "\\ud800"}', False),
        # The widest beam searches the limits allow, 4 at a time: each holds k slots at once.
        ("8", "beam search: 4 prompts x width 16, 240 tokens", c,
         completion(prompt=["Hi there"] * 4, n=16, max_tokens=240, use_beam_search=True,
                    ignore_eos=True), False),
    ]


def attacker(url: str, path: str, body: bytes, chunked: bool, stop, statuses) -> None:
    """One attacking client (a process of its own: no GIL shared with the probe)."""
    seen: Counter = Counter()
    with httpx.Client(base_url=url, timeout=120) as c:
        while not stop.is_set():
            content = iter([body]) if chunked else body
            try:
                seen[c.post(path, content=content,
                            headers={"Content-Type": "application/json"}).status_code] += 1
            except httpx.HTTPError as exc:
                seen[type(exc).__name__] += 1
    statuses.put(seen)


def probe_p50(client: httpx.Client, count: int) -> float:
    times = []
    for _ in range(count):
        start = time.perf_counter()
        client.post("/v1/completions", json=PROBE).raise_for_status()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def replay(url: str, attack: tuple, clients: int, probes: int) -> tuple[Counter, float]:
    """Send the attack from `clients` processes, over and over, while the probe runs."""
    _, _, path, body, chunked = attack
    ctx = multiprocessing.get_context("spawn")
    stop, statuses = ctx.Event(), ctx.Queue()
    workers = [ctx.Process(target=attacker, args=(url, path, body, chunked, stop, statuses))
               for _ in range(clients)]
    for w in workers:
        w.start()
    try:
        time.sleep(1.0)  # let the attack get going
        with httpx.Client(base_url=url, timeout=120) as c:
            p50 = probe_p50(c, probes)
    finally:
        stop.set()
    total: Counter = Counter()
    for _ in workers:
        total.update(statuses.get(timeout=300))
    for w in workers:
        w.join()
    return total, p50


def start_server(model: str | None, extra: list[str]) -> tuple[str, subprocess.Popen]:
    if model is None:
        from nanovllm.model.checkpoint.dummy import write_dummy_checkpoint
        model = str(write_dummy_checkpoint(tempfile.mkdtemp(prefix="hostile-"), "gpt2", n_layer=2))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "nanovllm.cli", "serve", model, "--port",
                             str(port), "--log-level", "warning", *extra])
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        try:
            if httpx.get(f"{url}/health").status_code == 200:
                return url, proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("the server did not start")
        time.sleep(0.2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="target a running server instead of starting one")
    parser.add_argument("--model", help="checkpoint to serve (default: a 2-layer dummy GPT-2)")
    parser.add_argument("--clients", type=int, default=2, help="attacking processes per row")
    parser.add_argument("--probes", type=int, default=15, help="probe requests per measurement")
    parser.add_argument("serve_args", nargs="*", help="extra `nanovllm serve` flags (after --)")
    args = parser.parse_args(argv)
    url, proc = (args.url, None) if args.url else start_server(args.model, args.serve_args)
    try:
        with httpx.Client(base_url=url, timeout=120) as c:
            probe_p50(c, 3)  # warm up
            baseline = probe_p50(c, args.probes)
        print(f"probe baseline p50: {baseline * 1000:.1f} ms ({url})")
        print(f"{'row':>3} | {'sent':<38} | {'statuses seen':<24} | probe p50 / baseline")
        for attack in attacks():
            row, sent = attack[:2]
            statuses, p50 = replay(url, attack, args.clients, args.probes)
            seen = ", ".join(f"{k}x{v}" for k, v in sorted(statuses.items(), key=str))
            print(f"{row:>3} | {sent:<38} | {seen:<24} | {p50 * 1000:7.1f} ms = "
                  f"{p50 / baseline:5.1f}x")
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
