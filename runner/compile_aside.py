"""Start-up's kernels compiled side by side: the attention kernels in a helper process
(`python -m nanovllm.runner.compile_aside NEEDS`) while the runner's own process compiles the
linear ones and the sampler's.

numba compiles one function at a time in a process (a global lock), and the attention and
linear kernels are most of a first start. Both processes save what they compile to numba's disk cache, from which
the runner then loads the helper's kernels (and every later start loads them all). With the
attention kernels cached already no helper is started; if the helper fails, the runner compiles
them itself, as it would have anyway.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import asdict

import numpy as np
from numba import config, typeof
from numba.core.typing.typeof import Purpose

from nanovllm.model.kernels.f32_attention import THREADS_MIN_WORK
from nanovllm.model.layers.attention import CHUNK_KERNELS, compile_attention_kernel
from nanovllm.model.layers.kernel_needs import KernelNeeds
from nanovllm.model.layers.linear import host_has_panels

logger = logging.getLogger("nanovllm")


@contextmanager
def attention_aside(needs: KernelNeeds):
    """Within: the attention kernels `needs` says compile in a helper process, while the caller
    compiles others; on leaving, waits for the helper, whose kernels are then in numba's disk
    cache (unless it failed: then the caller's `compile_kernels` compiles them)."""
    if config.DISABLE_JIT or attention_cached():
        yield
        return
    helper = subprocess.Popen([sys.executable, "-m", "nanovllm.runner.compile_aside",
                               json.dumps(asdict(needs))])
    logger.info("compiling the attention kernels in a helper process (pid %d) meanwhile",
                helper.pid)
    try:
        yield
        status = helper.wait()
    finally:
        if helper.poll() is None:  # (the caller raised: the helper's work has no use)
            helper.kill()
            helper.wait()
    if status:
        logger.warning("the helper process compiling the attention kernels exited with %d; "
                       "compiling them here", status)


def attention_cached() -> bool:
    """Whether numba's disk cache holds the float32 prefill kernel for this CPU, as
    `compile_attention_kernel` calls it (the largest of the group: standing for all of it)."""
    q = np.zeros((1, 1, 1), np.float32)
    kernel = CHUNK_KERNELS[host_has_panels()]
    signature = tuple(typeof(a, Purpose.argument) for a in (q, q, q, q, 0, THREADS_MIN_WORK))
    try:
        return kernel._cache.load_overload(signature, kernel.targetctx) is not None
    except Exception:  # numba's internals moved: compile as if nothing were cached
        return False


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    fields = json.loads(argv[0])
    compile_attention_kernel(KernelNeeds(**{**fields, "heads": tuple(fields["heads"])}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
