"""Is `scripts/roofs.py`'s memory roof the fastest read this machine does, and how near it do
the batch-1 weight kernels come?

Times, in turn and in one process (a VM's bandwidth drifts within seconds), best and median of
`--reps`:
- `roofs.py`'s own measurement: its parallel sum over 256 MiB;
- a 16-lane register read over `--mb` MB (four 64-byte vectors per step and thread, the
  packed kernel's own `f32_dot.broadcast_tile` with one row of ones): on 1 thread and split
  in two contiguous halves over 2;
- numpy's sum over the same array (one thread);
- the batch-1 weight chain of `--model`'s shapes (random weights): the packed float32 kernel
  (`linear.matmul_packed`, where this CPU packs) and the W8A8 one, per kind of matrix and
  whole. Each runs cold: everything timed between two runs of it reads far more than the L3.

    python -m nanovllm.scripts.lab.read_roof --model smollm2-135m --reps 7
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from nanovllm.model.platform.threads import configure_thread_pools

configure_thread_pools()  # before numpy loads: see model/platform/threads.py

# isort: split
import numpy as np  # noqa: E402
from numba import config  # noqa: E402

from nanovllm.scripts.lab.bare_read import ROW_BYTES, read_split  # noqa: E402


def weight_chain(model: str, int8: bool) -> dict[str, tuple]:
    """{kind: (run, bytes)}: the batch-1 products with every matrix of that kind in a step of
    `model` (random weights, the loader's own layout)."""
    from nanovllm import EngineConfig, LLMEngine
    from nanovllm.model.layers.linear import linear
    from nanovllm.scripts.lab.profile_decode import step_matrices

    engine = LLMEngine(EngineConfig(model, load_format="dummy",
                                    quantization="int8" if int8 else None))
    mats, head = step_matrices(engine.runner.weights)
    kinds = {"qkv": [m[0] for m in mats], "o": [m[1] for m in mats],
             "gate_up": [m[2] for m in mats], "down": [m[3] for m in mats], "lm_head": [head]}
    xs = {w: np.ones((1, w), np.float32) for ms in kinds.values() for w in {m.shape[1] for m in ms}}
    out = {}
    for kind, ms in kinds.items():
        def run(ms=ms):
            for m in ms:
                linear(xs[m.shape[1]], m)
        out[kind] = (run, sum(m.nbytes for m in ms))
    everything = list(out.values())
    out["whole chain"] = (lambda: [run() for run, _ in everything],
                          sum(nbytes for _, nbytes in everything))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--mb", type=int, default=540, help="size of the array read (MB)")
    p.add_argument("--reps", type=int, default=7)
    args = p.parse_args(argv)
    from nanovllm.scripts import roofs

    a = np.ones((args.mb * 10**6 // ROW_BYTES, ROW_BYTES // 4), np.float32)
    small = np.ones(64 * 2**20, np.float32)
    ones = np.ones(1, np.float32)
    fns = {"roofs.py (_sum, 256 MiB)": (lambda: roofs._sum(small), small.nbytes)}
    if not config.DISABLE_JIT:  # (an LLVM intrinsic: no Python version to run)
        fns["16-lane read, 1 thread"] = (lambda: read_split(a, 1, ones), a.nbytes)
        fns["16-lane read, 2 threads"] = (lambda: read_split(a, 2, ones), a.nbytes)
    fns["numpy sum (1 thread)"] = (lambda: a.sum(), a.nbytes)
    for int8 in (False, True):
        label = "int8" if int8 else "float32"
        for kind, fn in weight_chain(args.model, int8).items():
            fns[f"{label} {kind}, 1 row"] = fn
    for fn, _ in fns.values():
        fn()
    times = {name: [] for name in fns}
    print(f"load average before: {os.getloadavg()}")
    for _ in range(args.reps):
        for name, (fn, _) in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    print(f"load average after: {os.getloadavg()}")
    for name, (_, nbytes) in fns.items():
        t = np.array(times[name])
        print(f"{name:34s} {nbytes / 1e6:7.1f} MB  best {nbytes / t.min() / 1e9:5.1f} GB/s  "
              f"median {nbytes / np.median(t) / 1e9:5.1f} GB/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
