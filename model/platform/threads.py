"""How the two thread pools on this CPU share its cores: `configure_thread_pools()`.

numpy's GEMMs run on OpenBLAS's threads; the compiled kernels (`model/layers/linear.py`,
`model/layers/attention.py`) run on numba's OpenMP threads. A step alternates between them, and an
idle worker of either pool spins before it sleeps, keeping a core from the other pool:

- GNU OpenMP spins 300,000 rounds by default: a GEMM right after a kernel found its cores
  busy. 10,000 rounds still cover the gaps between the kernel calls of a step.
- GNU OpenMP also cuts that spin to 100 rounds once it manages more threads than there are
  cores, which happens as soon as a second thread runs kernels: each such thread gets a team of
  workers of its own (the server loads its model on the engine thread for that reason, but the
  web page's attention view runs kernels on a worker thread). The workers then sleep between
  kernels and every kernel waits for them to wake. `OMP_WAIT_POLICY=ACTIVE` keeps the
  10,000-round spin in that case too; with the count set it does not spin forever, and an idle
  process uses no CPU.
  That holds for GNU OpenMP only, which numba uses on Linux: other OpenMP runtimes read ACTIVE
  as "spin forever", so it is set on Linux only.
- OpenBLAS spins 2^28 cycles by default: a parallel kernel right after a GEMM ran at the speed
  of a serial one. 2^16 cycles still cover back-to-back GEMMs.

Each pool reads its setting once, when it starts (OpenBLAS when numpy loads), so the entry
points call `configure_thread_pools()` before numpy loads: `nanovllm`'s and `nanovllm.model`'s
lazy attributes, and the scripts. Importing this module changes nothing. A program that loads
numpy or torch before `nanovllm` leaves them their defaults: `nanovllm` then logs a warning.
"""

import os
import sys


def thread_pool_settings() -> dict[str, str]:
    """The environment variables `configure_thread_pools` sets, with their values."""
    settings = {"GOMP_SPINCOUNT": "10000", "OPENBLAS_THREAD_TIMEOUT": "16"}
    if sys.platform.startswith("linux"):
        settings["OMP_WAIT_POLICY"] = "ACTIVE"
    return settings


# Modules that start a pool as they load (numpy: OpenBLAS; torch: its own OpenBLAS and the
# GNU OpenMP that numba's kernels then share): a setting made after them does not reach it.
POOL_LOADERS = ("numpy", "torch")


def configure_thread_pools() -> list[str]:
    """Sets the pools' spin times in os.environ, keeping any value the user set. Idempotent;
    effective only before numpy (OpenBLAS) and numba's first parallel kernel (OpenMP) start.
    Returns the modules of `POOL_LOADERS` that had loaded before it set anything (their pools
    keep their defaults); a later call sets nothing and returns []."""
    unset = {k: v for k, v in thread_pool_settings().items() if k not in os.environ}
    os.environ.update(unset)
    return [m for m in POOL_LOADERS if m in sys.modules] if unset else []
