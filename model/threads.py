"""How the two thread pools on this CPU share its cores.

numpy's GEMMs run on OpenBLAS's threads; the compiled kernels (`model/linear.py`,
`model/attention.py`) run on numba's OpenMP threads. A step alternates between them, and an
idle worker of either pool spins before it sleeps, keeping a core from the other pool:

- GNU OpenMP spins 300,000 rounds (milliseconds here) by default: the GEMM after a kernel ran
  2x slower. 10,000 rounds still cover the gaps between the kernel calls of a step.
- GNU OpenMP also cuts that spin to 100 rounds once it manages more threads than there are
  cores, which happens as soon as a second thread runs kernels (the server's engine thread,
  after start-up compiled them on the main thread). Its workers then sleep between kernels and
  each kernel waits ~50 us to wake them: batch-1 decode steps ran 20-30% slower there.
  `OMP_WAIT_POLICY=ACTIVE` keeps the 10,000-round spin in that case too; with the count set it
  does not spin forever, and an idle process uses no CPU. That holds for GNU OpenMP only, which
  numba uses on Linux: other OpenMP runtimes read ACTIVE as "spin forever", so it is set on
  Linux only.
- OpenBLAS spins 2^28 cycles (~0.1 s) by default: a parallel kernel after a GEMM ran at the
  speed of a serial one. 2^16 cycles (~20 us) still cover back-to-back GEMMs.

Each pool reads its setting once, when it starts: this module must be imported before numpy
(`import model` and `import nanovllm` do it first). A value the user set is kept.
"""

import os
import sys

os.environ.setdefault("GOMP_SPINCOUNT", "10000")
if sys.platform.startswith("linux"):
    os.environ.setdefault("OMP_WAIT_POLICY", "ACTIVE")
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "16")
