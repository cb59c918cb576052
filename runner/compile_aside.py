"""Start-up's kernels compiled side by side: decode attention's and prefill attention's each in a
helper process (`python -m nanovllm.runner.compile_aside decode|prefill NEEDS`) while the
runner's own process compiles the linear kernels and the sampler's.

numba compiles one function at a time in a process (a global lock), and those groups are most
of a first start. Each process saves what it compiles to numba's disk cache, from which the
runner then loads the helpers' kernels (and every later start loads them all). With the
attention kernels cached already no helper is started; if one fails, the runner compiles its
kernels itself, as it would have anyway.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from contextlib import ExitStack, contextmanager
from dataclasses import asdict

import numpy as np
from numba import config, typeof
from numba.core.typing.typeof import Purpose

from nanovllm.model.kernels.f32_attention import THREADS_MIN_WORK
from nanovllm.model.layers.attention import (
    CHUNK_KERNELS,
    compile_decode_attention,
    compile_prefill_attention,
    host_tile_lanes,
)
from nanovllm.model.layers.kernel_needs import KernelNeeds

logger = logging.getLogger("nanovllm")

GROUPS = {"decode": compile_decode_attention, "prefill": compile_prefill_attention}


@contextmanager
def attention_aside(needs: KernelNeeds):
    """Within: the attention kernels `needs` says compile in helper processes, while the caller
    compiles others; on leaving, waits for the helpers, whose kernels are then in numba's disk
    cache (unless one failed: then the caller's `compile_kernels` compiles them)."""
    if config.DISABLE_JIT or attention_cached():
        yield
        return
    with ExitStack() as helpers:
        for group in GROUPS:
            helpers.enter_context(helper(group, needs))
        yield


@contextmanager
def helper(group: str, needs: KernelNeeds):
    """One helper process compiling `group`'s kernels; waited for on leaving (killed if what
    ran meanwhile raised: its work has no use then)."""
    process = subprocess.Popen([sys.executable, "-m", "nanovllm.runner.compile_aside", group,
                                json.dumps(asdict(needs))])
    logger.info("compiling %s attention's kernels in a helper process (pid %d) meanwhile",
                group, process.pid)
    try:
        yield
        status = process.wait()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    if status:
        logger.warning("the helper process compiling %s attention's kernels exited with %d; "
                       "compiling them here", group, status)


def attention_cached() -> bool:
    """Whether numba's disk cache holds the float32 prefill kernel for this CPU, as
    `compile_prefill_attention` calls it (the largest: standing for all of them)."""
    q = np.zeros((1, 1, 1), np.float32)
    kernel = CHUNK_KERNELS[host_tile_lanes()]
    signature = tuple(typeof(a, Purpose.argument) for a in (q, q, q, q, 0, THREADS_MIN_WORK))
    try:
        return kernel._cache.load_overload(signature, kernel.targetctx) is not None
    except Exception:  # numba's internals moved: compile as if nothing were cached
        return False


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    group, fields = argv[0], json.loads(argv[1])
    GROUPS[group](KernelNeeds(**{**fields, "heads": tuple(fields["heads"]),
                                 "block_types": tuple(fields["block_types"])}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
