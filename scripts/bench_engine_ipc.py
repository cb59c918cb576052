"""What one step's outputs cost between an engine process and its server: `nanovllm bench
engine-ipc`.

    nanovllm bench engine-ipc                      # batches of 1, 16, 64 and 256 requests
    nanovllm bench engine-ipc --batch 64 --steps 2000

For each batch size B, a step is B generating requests' outputs, each one token (a few bytes
of text) longer than at the step before, with the engine's stats: the engine side encodes them
(nanovllm/engine_core/wire.py, as the engine process does), the frame goes through a Unix
socket pair, and the server side decodes it back into cumulative RequestOutputs. Both sides
run in this process one after the other, so the figure is the CPU time a step's IPC costs both
processes together, the socket's system calls included (building the outputs, which the engine
does in either layout, is not timed); it is the median over --reps runs of --steps steps each.
"""

from __future__ import annotations

import argparse
import os
import socket
import time

from nanovllm.engine_core import wire
from nanovllm.scripts.bench_utils import Summary, describe_environment, environment, parse_int_list
from nanovllm.stats import EngineStats
from nanovllm.values.outputs import CompletionOutput, RequestMetrics, RequestOutput


def add_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--batch", type=parse_int_list, default=[1, 16, 64, 256], metavar="B,B,...",
                        help="requests with an output each step (default 1,16,64,256)")
    parser.add_argument("--steps", type=int, default=500, help="steps per run (default 500)")
    parser.add_argument("--reps", type=int, default=5, help="runs per batch size (default 5)")
    return parser


def stats() -> EngineStats:
    return EngineStats(3, 1, 900, 1024, 0.12, 12_345, 67_890, 2, 400, 300, 1, 1, 1_000,
                       tuple(range(14)), 123_456, 16, "float16", True)


def run_steps(batch: int, steps: int) -> float:
    """Seconds per step of encoding, sending, receiving and decoding `batch` outputs."""
    ours, theirs = socket.socketpair()
    reader, decoder = wire.FrameReader(theirs), wire.OutputDecoder()
    sent = [[] for _ in range(batch)]
    tokens = [[] for _ in range(batch)]
    ids = [f"cmpl-{i:032x}-0" for i in range(batch)]
    for rid in ids:
        decoder.start(rid, "a prompt", list(range(32)))
    metrics, engine_stats = RequestMetrics(0.0, 0.0, 0.0), stats()
    seconds = 0.0
    for step in range(steps):
        outputs = []
        for i, rid in enumerate(ids):
            tokens[i].append(step % 50_000)
            c = CompletionOutput(0, " word" * (step + 1), tokens[i], None, None)
            outputs.append(RequestOutput(rid, "a prompt", [], None, [c], False, 0, metrics))
        start = time.perf_counter()  # (building the outputs is the engine's work either way)
        encoded = [wire.encode_output(out, sent[i]) for i, out in enumerate(outputs)]
        ours.sendall(wire.encode((wire.OUTPUTS, wire.dumps(engine_stats), encoded)))
        message = reader.read()
        wire.loads(message[1])
        for item in message[2]:
            decoder.decode(item)
        seconds += time.perf_counter() - start
    seconds /= steps
    ours.close()
    theirs.close()
    return seconds


def run(args: argparse.Namespace) -> int:
    print(describe_environment(environment()))
    print(f"load average: {os.getloadavg()[0]:.1f}")
    print(f"{'batch':>6} {'us/step':>22} {'us/request':>10}")
    for batch in args.batch:
        runs = Summary.of([1e6 * run_steps(batch, args.steps) for _ in range(args.reps)])
        print(f"{batch:>6} {runs.fmt(1):>22} {runs.median / batch:>10.2f}")
    return 0
