"""Does one core read memory while it computes? A one-row block product against a plain loop.

Each is timed on one thread, hot (the same 1-MB-class matrix again and again, in L2) and cold
(`--copies` copies in turn, far more than the L3), beside a bare read of the same copies
(`bare_read.read_split`). Where the core overlaps its reads with its arithmetic, cold takes
about the longer of hot and the read; where it does not, their sum. The plain loop mixes each
byte `--rounds` times (multiply, shift, xor) and adds it up: no vector tricks, no prefetches.

    python -m nanovllm.scripts.lab.overlap --type Q4_0 --shape 2304x768 --reps 7 \
        [--kernels avx512vnni avxvnni avx2]
"""

from __future__ import annotations

import argparse
import sys
import time

from nanovllm.model.platform.threads import configure_thread_pools

configure_thread_pools()  # before numpy loads: see model/platform/threads.py

# isort: split
import numpy as np  # noqa: E402
from numba import njit, set_num_threads  # noqa: E402

from nanovllm.model.weights.block_quant import QUANTIZABLE  # noqa: E402
from nanovllm.scripts.lab.bare_read import as_rows, read_split  # noqa: E402


def mixing_loop(rounds: int):
    """A compiled sum over a uint8 array, each byte mixed `rounds` times first."""
    @njit(nogil=True)
    def run(a):
        total = np.uint32(0)
        for i in range(a.shape[0]):
            v = np.uint32(a[i])
            for _ in range(rounds):
                v = (v * np.uint32(2654435761)) ^ (v >> np.uint32(7))
            total += v
        return total
    return run


def hot_cold_us(fn, items, reps: int) -> tuple[float, float]:
    """Median us of fn(item): on items[0] again and again, and on each item in turn."""
    fn(items[0])
    hot, cold = [], []
    for _ in range(reps):
        start = time.perf_counter()
        for _ in items:
            fn(items[0])
        hot.append((time.perf_counter() - start) / len(items))
        start = time.perf_counter()
        for item in items:
            fn(item)
        cold.append((time.perf_counter() - start) / len(items))
    return float(np.median(hot)) * 1e6, float(np.median(cold)) * 1e6


def report(name: str, hot: float, cold: float, read: float) -> None:
    print(f"{name}: hot {hot:.1f} us, cold {cold:.1f} us; the read alone {read:.1f} us: cold "
          f"is {cold / max(hot, read):.2f}x the longer of the two, {cold / (hot + read):.2f}x "
          f"their sum")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--type", default="Q4_0", choices=QUANTIZABLE,
                   help="block type of the product (one nanovllm quantizes to)")
    p.add_argument("--shape", default="2304x768", help="outputs x inputs (GPT-2's q/k/v)")
    p.add_argument("--kernels", nargs="+", default=None,
                   help="block kernels to time (`block_gemm.ISAS` this CPU runs; default: "
                        "the one the server takes here)")
    p.add_argument("--copies", type=int, default=60, help="matrices read in turn when cold")
    p.add_argument("--rounds", type=int, nargs="+", default=[0, 1],
                   help="the plain loop's mixing rounds a byte")
    p.add_argument("--reps", type=int, default=7)
    args = p.parse_args(argv)
    from nanovllm.model.kernels.block_gemm import block_linear
    from nanovllm.model.layers.linear import host_block_kernel
    from nanovllm.model.weights.block_quant import from_float

    set_num_threads(1)
    n, k = map(int, args.shape.split("x"))
    rng = np.random.default_rng(0)
    w = rng.standard_normal((n, k)).astype(np.float32)
    mats = [from_float(args.type, w + i) for i in range(args.copies)]
    ones = np.ones(1, np.float32)
    flat = [as_rows(m.packed.reshape(-1)) for m in mats]
    _, read = hot_cold_us(lambda a: read_split(a, 1, ones), flat, args.reps)
    x = np.ones((1, k), np.float32)
    for kernel in args.kernels or [host_block_kernel()]:
        name = f"{args.type} {n}x{k} one-row product on {kernel} ({mats[0].nbytes / 1e6:.2f} MB)"
        report(name,
               *hot_cold_us(lambda m, kernel=kernel: block_linear(x, m, kernel), mats,
                           args.reps), read)
    codes = [m.packed.reshape(-1) for m in mats]
    for rounds in args.rounds:
        report(f"plain loop, {rounds} rounds a byte", *hot_cold_us(mixing_loop(rounds), codes,
                                                                   args.reps), read)
    return 0


if __name__ == "__main__":
    sys.exit(main())
