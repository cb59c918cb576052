"""Two models on one server (`nanovllm serve --models-dir`): what each keeps of its throughput
alone when both are loaded at once, what a load on demand costs, and what an unload returns.

    nanovllm bench models                      # two random-weight GPT-2 124M, written once
    nanovllm bench models --models-dir DIR --model-a chat --model-b coder --clients 16

It starts the server itself (so it knows its process), then:
1. load time: model A loaded on demand (POST /v1/models/load), unloaded, and loaded again
   (the second load's kernels are compiled and its files in the page cache), with the resident
   memory of the server and its engine processes before the load, while loaded, after unload;
2. throughput: --clients streamed completions at A alone, at B alone, then --clients at each
   at once, repeated --repeats times alternating; each model's output tok/s together over its
   tok/s alone is the figure (1.0: the other model cost it nothing; 0.5: the CPU is shared).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

from nanovllm.scripts import benchmark_serving as bs
from nanovllm.scripts.http_client import Client, new_event_loop
from nanovllm.scripts.serve_vs_offline import free_port, stop_server, wait_until_healthy


def add_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p = parser
    p.add_argument("--models-dir", default=None,
                   help="checkpoints to serve (default: two random-weight GPT-2 124M, written "
                        "to a temporary directory)")
    p.add_argument("--model-a", default="a", help="the first model's name (default a)")
    p.add_argument("--model-b", default="b", help="the second model's name (default b)")
    p.add_argument("--clients", type=int, default=16, help="concurrent clients per model")
    p.add_argument("--num-prompts", type=int, default=32, help="requests per model per run")
    p.add_argument("--input-len", type=int, default=32)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2, help="alone/together runs, alternating")
    p.add_argument("--serve-args", default="", help="more `nanovllm serve` flags, one string")
    return p


def write_models(root: Path, names: list[str]) -> None:
    from nanovllm.model import write_dummy_checkpoint

    for i, name in enumerate(names):
        write_dummy_checkpoint(root / name, "gpt2", seed=i)


def post(url: str, path: str, body: dict) -> float:
    """POST a JSON body; the seconds until its answer."""
    import json

    request = urllib.request.Request(f"{url}{path}", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=600) as response:
        response.read()
    return time.perf_counter() - start


def children(pid: int) -> list[int]:
    return [int(c) for task in Path(f"/proc/{pid}/task").iterdir()
            for c in (task / "children").read_text().split()]


def rss_mib(pid: int) -> float:
    """Resident MiB of the server process and its engine processes."""
    def rss(p: int) -> int:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        except OSError:
            pass
        return 0
    return (rss(pid) + sum(rss(c) for c in children(pid))) / 1024


def load_figures(url: str, pid: int, model: str) -> str:
    settle = 2.0  # (an unloaded engine process exits after the unload's answer)
    before = rss_mib(pid)
    cold = post(url, "/v1/models/load", {"model": model})
    during = rss_mib(pid)
    post(url, "/v1/models/unload", {"model": model})
    time.sleep(settle)
    after = rss_mib(pid)
    warm = post(url, "/v1/models/load", {"model": model})
    return (f"load of {model} on demand: first {cold:.2f} s, again {warm:.2f} s\n"
            f"resident memory (server + engine processes): before {before:.0f} MiB, loaded "
            f"{during:.0f} MiB, after unload {after:.0f} MiB")


def vocabularies(url: str) -> dict[str, int]:
    """Each loaded model's vocabulary size, as /v1/models says (prompt ids are drawn below)."""
    import json

    with urllib.request.urlopen(f"{url}/v1/models", timeout=60) as response:
        cards = json.loads(response.read())["data"]
    return {c["id"]: c["vocab_size"] for c in cards if c.get("vocab_size")}


async def drive(url: str, args, models: list[str], seed: int) -> dict[str, float]:
    """--clients streams at each of `models` at once; output tok/s per model."""
    client = Client(url)

    async def one(model: str, stream: int) -> float:
        body_args = argparse.Namespace(**vars(args), vocab_size=args.vocab[model],
                                       random_range_ratio=0.0, seed=seed, ignore_eos=True)
        bodies = [bs.request_body(body_args, model, p)
                  for p in bs.make_prompts(body_args, stream)]
        results, duration = await bs.run_load(client, "/v1/completions", bodies, args.clients,
                                              math.inf, None, np.random.default_rng(stream),
                                              600.0)
        if failed := [r.error for r in results if not r.ok]:
            raise RuntimeError(f"{model}: {len(failed)} requests failed: {failed[0]}")
        return sum(r.output_tokens for r in results) / duration

    try:
        rates = await asyncio.gather(*(one(m, i) for i, m in enumerate(models)))
    finally:
        await client.aclose()
    return dict(zip(models, rates))


def run(args: argparse.Namespace) -> int:
    a, b = args.model_a, args.model_b
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.models_dir) if args.models_dir else Path(tmp)
        if not args.models_dir:
            write_models(root, [a, b])
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "nanovllm.cli", "serve", "--models-dir", str(root),
               "--keep-alive", "-1", "--host", "127.0.0.1", "--port", str(port),
               "--disable-log-requests", *args.serve_args.split()]
        with open(Path(tmp) / "server.log", "w") as log:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT)
            try:
                wait_until_healthy(url, proc, 300)
                print(load_figures(url, proc.pid, a), flush=True)
                post(url, "/v1/models/load", {"model": b})
                args.vocab = vocabularies(url)
                print(throughput(url, args, a, b), flush=True)
            finally:
                stop_server(proc)
    return 0


def throughput(url: str, args, a: str, b: str) -> str:
    loop = new_event_loop()
    alone = {a: [], b: []}
    together = {a: [], b: []}
    try:
        loop.run_until_complete(drive(url, args, [a, b], seed=99))  # warm both
        for rep in range(args.repeats):
            for m in (a, b):
                alone[m].append(loop.run_until_complete(drive(url, args, [m], rep))[m])
            both = loop.run_until_complete(drive(url, args, [a, b], rep))
            for m in (a, b):
                together[m].append(both[m])
    finally:
        loop.close()
    lines = [f"{args.clients} clients per model, {args.num_prompts} requests of "
             f"{args.input_len}+{args.output_len} tokens, {args.repeats} runs (median):"]
    for m in (a, b):
        one, two = float(np.median(alone[m])), float(np.median(together[m]))
        lines.append(f"  {m}: alone {one:.1f} tok/s, beside the other {two:.1f} tok/s, "
                     f"ratio {two / one:.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return run(add_args(argparse.ArgumentParser(description=__doc__.split("\n")[0])).parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
