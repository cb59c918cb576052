"""Served decode against the engine's own on one checkpoint: `nanovllm bench serve-vs-offline`.

    nanovllm bench serve-vs-offline gpt2 --load-format dummy                  # C = 1 and 16
    nanovllm bench serve-vs-offline gpt2 --load-format dummy --concurrency 1,16,64 --reps 7

The engine options after the model go to both sides. `nanovllm serve` runs in a subprocess
started with them; the offline engine (LLM) is built with them in this process. For each
concurrency C, every rep runs both sides once, alternating which goes first (ABBA, so a load
that drifts slows both alike):

  offline: C prompts through LLM.generate, all at once;
  served:  the same load as C streamed /v1/completions requests sent at once, read by
           `bench serve`'s client (nanovllm/scripts/http_client.py).

Each prompt is --input-len random token ids (fresh ones every run: the prefix cache never
hits; the engine's --seed seeds them too), greedy, EOS ignored, --output-len tokens. Per run, on both sides alike:

  decode tok/s = tokens after each request's first / (last token - the last request's first
                 token), on the engine's clock offline and as the client reads them served
  TTFT         = median over the requests of (first token - submitted)
  CPU us/token = user + system CPU time / tokens generated: offline, this process's; served,
                 the server process's with its engine process's (all threads; and its event
                 loop's: the main thread) and the client's (this process)

served/offline is each rep's ratio; tables give the median and [min-max] over --reps. CPU time
per token moves far less with other load on the machine than wall-clock rates, so it says where
serving costs even when ratios are noisy (Linux counts it in ticks of 10 ms: runs of a second
or more are needed); the load average is printed before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from nanovllm.config import EngineConfig, add_engine_args
from nanovllm.scripts import benchmark_serving as bs
from nanovllm.scripts.bench_utils import (
    Summary,
    describe_environment,
    environment,
    parse_int_list,
    render_table,
    write_json,
)
from nanovllm.scripts.http_client import Client, new_event_loop


def add_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p = parser
    p.add_argument("model", help="checkpoint directory, hub name or preset (with --load-format "
                                 "dummy: random weights)")
    p.add_argument("--concurrency", type=parse_int_list, default=[1, 16], metavar="C,C,...",
                   help="requests at once, one cell each (default 1,16)")
    p.add_argument("--reps", type=int, default=5, help="runs of each side per cell (default 5)")
    p.add_argument("--input-len", type=int, default=32, help="prompt tokens (default 32)")
    p.add_argument("--output-len", type=int, default=128, help="tokens per request (default 128)")
    p.add_argument("--startup-timeout", type=float, default=600.0,
                   help="seconds the server may take to start (default 600)")
    p.add_argument("--json", default=None, metavar="FILE", help="write every run as JSON")
    p.add_argument("--engine-in-process", action="store_true",
                   help="serve with the engine on a thread of the server's process "
                        "(`serve --engine-in-process`), not in an engine process")
    add_engine_args(p)
    return parser


def check_args(args: argparse.Namespace) -> str | None:
    if not args.concurrency or min(args.concurrency) < 1:
        return "--concurrency needs positive integers, e.g. 1,16"
    if args.reps < 1:
        return "--reps must be at least 1"
    if args.input_len < 1 or args.output_len < 2:
        return "--input-len must be at least 1 and --output-len at least 2 (decode follows the first token)"
    return None


def engine_argv(args: argparse.Namespace) -> list[str]:
    """The engine flags given (those not at their default), for `nanovllm serve`."""
    argv = []
    for f in fields(EngineConfig):
        value = getattr(args, f.name, f.default)
        if f.name == "model" or value == f.default:
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        else:
            argv += [flag, str(value)]
    return argv


# --------------------------------------------------------------------------- one run


@dataclass(slots=True)
class Run:
    """One side's run of one cell."""
    decode_tok_s: float
    ttft_ms: float      # median over the requests
    tokens: int         # generated, first tokens included
    cpu_us_per_token: float | None              # offline: this process; served: the server's
    loop_cpu_us_per_token: float | None = None  # served: the server's event loop (main thread)
    client_cpu_us_per_token: float | None = None  # served: the client (this process)


def decode_rate(first_times: list[float], last_times: list[float], tokens: int, n: int) -> float:
    """Tokens after the first of each of `n` requests, per second from the moment every
    request had its first token to the last token."""
    span = max(last_times) - max(first_times)
    return (tokens - n) / span if span > 0 else math.nan


def offline_run(llm, prompts: list[list[int]], output_len: int) -> Run:
    from nanovllm.values.sampling_params import SamplingParams

    params = SamplingParams(max_tokens=output_len, temperature=0.0, ignore_eos=True)
    cpu = time.process_time()
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    cpu = time.process_time() - cpu
    metrics = [o.metrics for o in outs]
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    firsts, lasts = [m.first_token_time for m in metrics], [m.last_token_time for m in metrics]
    ttft = float(np.median([m.first_token_time - m.arrival_time for m in metrics]))
    return Run(decode_rate(firsts, lasts, tokens, len(outs)), ttft * 1e3, tokens,
               1e6 * cpu / tokens)


def served_run(loop: asyncio.AbstractEventLoop, url: str, model: str, server_pid: int,
               prompts: list[list[int]], output_len: int) -> Run:
    body_args = argparse.Namespace(ignore_eos=True)
    bodies = [bs.request_body(body_args, model, bs.Prompt(p, output_len)) for p in prompts]
    server_cpu, server_loop_cpu = tree_cpu_seconds(server_pid), cpu_seconds(server_pid, server_pid)
    cpu = time.process_time()
    results = loop.run_until_complete(_send_all(url, bodies))
    cpu = time.process_time() - cpu
    server_cpu = _minus(tree_cpu_seconds(server_pid), server_cpu)
    server_loop_cpu = _minus(cpu_seconds(server_pid, server_pid), server_loop_cpu)
    if failed := [r.error for r in results if not r.ok]:
        raise RuntimeError(f"{len(failed)} of {len(results)} requests failed: {failed[0]}")
    tokens = sum(r.output_tokens for r in results)
    firsts = [r.start + r.ttft for r in results]
    lasts = [r.start + r.ttft + sum(r.itl) for r in results]  # the last chunk with text
    ttft = float(np.median([r.ttft for r in results]))
    return Run(decode_rate(firsts, lasts, tokens, len(results)), ttft * 1e3, tokens,
               _per_token(server_cpu, tokens), _per_token(server_loop_cpu, tokens),
               1e6 * cpu / tokens)


async def _send_all(url: str, bodies: list[dict]) -> list:
    client = Client(url)
    try:
        results, _ = await bs.run_load(client, "/v1/completions", bodies, len(bodies),
                                       math.inf, None, np.random.default_rng(0), 600.0)
    finally:
        await client.aclose()
    return results


def cpu_seconds(pid: int, thread: int | None = None) -> float | None:
    """User + system CPU seconds of process `pid`, all its threads, or of one `thread` of it
    (its main thread's id is `pid`). Linux; None elsewhere."""
    try:
        with open(f"/proc/{pid}/task/{thread}/stat" if thread else f"/proc/{pid}/stat") as f:
            stat = f.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    except OSError:
        return None
    return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def tree_cpu_seconds(pid: int) -> float | None:
    """cpu_seconds of process `pid` and of its child processes (its engine process)."""
    try:
        children = [int(c) for task in Path(f"/proc/{pid}/task").iterdir()
                    for c in (task / "children").read_text().split()]
    except OSError:
        children = []
    total = cpu_seconds(pid)
    for child in children:
        total = None if total is None else total + (cpu_seconds(child) or 0.0)
    return total


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _per_token(seconds: float | None, tokens: int) -> float | None:
    return None if seconds is None else 1e6 * seconds / tokens


# --------------------------------------------------------------------------- the server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: argparse.Namespace, port: int, log) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "nanovllm.cli", "serve", args.model, *engine_argv(args),
           "--host", "127.0.0.1", "--port", str(port), "--disable-log-requests",
           *(["--engine-in-process"] if args.engine_in_process else [])]
    print(f"starting: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)


def wait_until_healthy(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the server did not answer /health within {timeout:g} s")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------------- main


@dataclass(slots=True)
class Cell:
    concurrency: int
    offline: list[Run] = field(default_factory=list)
    served: list[Run] = field(default_factory=list)


def measure(args: argparse.Namespace, llm, loop: asyncio.AbstractEventLoop, url: str,
            model: str, pid: int) -> list[Cell]:
    vocab = llm.engine.processor.vocab_size

    def prompts(c: int, rep: int, side: int) -> list[list[int]]:
        rng = np.random.default_rng([args.seed, c, rep, side])
        return rng.integers(0, vocab - 1, (c, args.input_len)).tolist()  # the last id: often EOS

    cells = []
    for c in args.concurrency:
        print(f"C={c}: warming up, then {args.reps} reps of offline and served ...",
              file=sys.stderr, flush=True)
        offline_run(llm, prompts(c, args.reps, 0), 8)  # a stream no timed run uses
        served_run(loop, url, model, pid, prompts(c, args.reps, 1), 8)
        cell = Cell(c)
        for rep in range(args.reps):
            for side in ((0, 1) if rep % 2 == 0 else (1, 0)):
                batch = prompts(c, rep, side)
                if side == 0:
                    cell.offline.append(offline_run(llm, batch, args.output_len))
                else:
                    cell.served.append(served_run(loop, url, model, pid, batch,
                                                  args.output_len))
        cells.append(cell)
    return cells


def _summary(values: list[float | None], digits: int) -> str:
    s = Summary.of([v for v in values if v is not None and not math.isnan(v)])
    return s.fmt(digits) if s else "n/a"


def format_tables(cells: list[Cell]) -> str:
    speed = [["C", "offline tok/s", "served tok/s", "served/offline", "TTFT offline ms",
              "TTFT served ms"]]
    cpu = [["C", "offline", "server", "server - offline", "server's event loop", "client"]]
    for cell in cells:
        off, srv = cell.offline, cell.served
        speed.append([str(cell.concurrency), _summary([r.decode_tok_s for r in off], 1),
                      _summary([r.decode_tok_s for r in srv], 1),
                      _summary([s.decode_tok_s / o.decode_tok_s for o, s in zip(off, srv)], 3),
                      _summary([r.ttft_ms for r in off], 1), _summary([r.ttft_ms for r in srv], 1)])
        extra = [None if s.cpu_us_per_token is None else s.cpu_us_per_token - o.cpu_us_per_token
                 for o, s in zip(off, srv)]
        cpu.append([str(cell.concurrency), _summary([r.cpu_us_per_token for r in off], 0),
                    _summary([r.cpu_us_per_token for r in srv], 0), _summary(extra, 0),
                    _summary([r.loop_cpu_us_per_token for r in srv], 0),
                    _summary([r.client_cpu_us_per_token for r in srv], 0)])
    return ("decode throughput, served (streamed over HTTP) against offline (LLM.generate), "
            "median [min-max]:\n" + render_table(speed) +
            "\n\nCPU microseconds per generated token (user + system), median [min-max]; the "
            "server's event loop is its main thread, the client this process:\n" +
            render_table(cpu))


def run(args: argparse.Namespace) -> int:
    if problem := check_args(args):
        print(f"error: {problem}", file=sys.stderr)
        return 2
    from nanovllm.llm import LLM
    from nanovllm.server.cli import served_name

    env = environment()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile("w+") as log:
        server = start_server(args, port, log)
        try:
            config = EngineConfig.from_cli_args(args.model, args)  # loads while the server does
            llm = LLM(**{f: getattr(config, f) for f in config.__slots__})
            wait_until_healthy(url, server, args.startup_timeout)
            loop = new_event_loop()  # the client's, for every served run
            try:
                cells = measure(args, llm, loop, url, served_name(args.model), server.pid)
            finally:
                loop.close()
        except (RuntimeError, OSError) as e:
            log.seek(0)
            print(f"{log.read()[-3000:]}\nerror: {e}", file=sys.stderr)
            return 1
        finally:
            stop_server(server)
    print(describe_environment(env))
    print(f"{args.model} ({' '.join(engine_argv(args)) or 'default engine options'}): "
          f"{args.input_len} -> {args.output_len} tokens, greedy, EOS ignored; {args.reps} reps "
          "per cell, offline and served alternating, fresh prompts every run\n")
    print(format_tables(cells))
    print(f"\nload average {os.getloadavg()[0]:.2f} at the end (other processes on these CPUs "
          "skew wall-clock ratios; CPU time per token much less)")
    if args.json:
        write_json({"environment": env, "settings": {"model": args.model,
                    "engine": engine_argv(args), "input_len": args.input_len,
                    "output_len": args.output_len, "reps": args.reps},
                    "cells": [asdict(c) for c in cells]}, args.json)
    return 0
