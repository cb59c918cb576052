"""When a kernel runs on numba's threads, and how they share its work out.

- `on_threads`: the one rule for when a kernel shares its work out among numba's threads
  (`PARALLEL_MIN_WORK`).
- `claim`, `chunk_counter`, `split_chunks`: a parallel kernel's chunks handed to the threads as
  they ask for them;
  `stream_chunks`: how many a one-row product cuts its weights into.
  numba's OpenMP threads split a `prange` into fixed equal halves, so one thread the OS keeps
  off its core for a while (a client on the same machine, the server's event loop) or one
  half that costs more made the other wait at the end of every kernel.

numba's on-disk cache does not notice edits to this module in the kernels that use it: after
changing it, delete `model/*/__pycache__/*.nbi` and `*.nbc`.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

# Starting and joining a parallel region costs more than normalizing, gating, rotating or
# attending a decode step's rows (even at batch 64), and on a busy machine it waits for a thread
# the OS has parked. Below this much work (elements written, or multiply-adds) a kernel runs on
# the calling thread; a prefill's rows and a large batch's are shared out.
PARALLEL_MIN_WORK = 1 << 17


@njit(cache=True, nogil=True, inline="always")
def on_threads(work):
    """Whether a kernel with this much work runs on numba's threads (`PARALLEL_MIN_WORK`):
    every row-wise kernel, decode attention and the activations' quantizer ask it."""
    return work >= PARALLEL_MIN_WORK

# A parallel kernel's work is cut into this many chunks (of output columns, of sequences) for
# the threads to `claim`: enough that a thread's last chunk is short, few enough that each
# still reads its weights in long runs.
NUM_CHUNKS = 64


@njit(cache=True, nogil=True, inline="always")
def count_chunks(n, step):
    """How many chunks of `step` items cover n items, none of them empty (0 if step is 0):
    prange shares out its iterations, not their work, evenly among the threads, so empty
    chunks at the end would leave the last thread idle while the first works through its
    share."""
    return (n + step - 1) // step if step else 0


@njit(cache=True, nogil=True, inline="always")
def split_chunks(n, multiple, parts=NUM_CHUNKS):
    """(step, chunks): n items cut into about `parts` chunks of `step` items, step a
    multiple of `multiple` (a kernel's tile), the last chunk possibly shorter."""
    step = ((n + parts - 1) // parts + multiple - 1) // multiple * multiple
    return step, count_chunks(n, step)


# A block-quantized product for one row of x (a decode step at batch 1) is bound by reading its
# weights from memory, and each chunk a thread claims starts a new stream that the prefetchers
# ramp up on (the threads' chunks alternate): its chunks hold at least this many bytes. Cut
# into NUM_CHUNKS, a decode step's 1-4 MB matrices of 4-bit codes read measurably slower; int8
# (W8A8) rows, a byte a weight, read as fast either way (AMD Zen 3).
STREAM_CHUNK_BYTES = 1 << 18


@njit(cache=True, nogil=True, inline="always")
def stream_chunks(nbytes):
    """How many chunks a one-row product cuts `nbytes` of weights into: NUM_CHUNKS at most,
    none under STREAM_CHUNK_BYTES but for the two that keep both threads of a small matrix
    busy."""
    return max(2, min(NUM_CHUNKS, nbytes // STREAM_CHUNK_BYTES))


@njit(cache=True, nogil=True, inline="always")
def chunk_counter():
    """A counter for `claim`, at 0. Not np.zeros: in a parallel kernel numba makes that a
    parallel loop of its own, a second region to start and join on every call."""
    taken = np.empty(1, np.intp)
    taken[0] = 0
    return taken


def claim(taken):
    """The next chunk for the calling thread: taken[0] (an intp array of one: `chunk_counter`),
    counted up by one atomically. A kernel runs `prange(chunks)` and has each iteration claim
    chunks until they run out: a thread's first iteration works through chunks as long as any
    are left, while the other threads do the same, and its remaining iterations find none. So
    the threads share out the chunks by how fast they go through them, not in fixed halves. As
    plain Python, what the one thread does."""
    chunk = taken[0]
    taken[0] = chunk + 1
    return chunk


@overload(claim, inline="always")
def _claim(taken):
    return lambda taken: claim_(taken)


@intrinsic
def claim_(typingctx, taken):
    """`claim` as one atomic add (no ordering beyond its own: the chunks are independent, and
    the kernel's end waits for every thread)."""
    if not (isinstance(taken, types.Array) and taken.dtype == types.intp and taken.ndim == 1):
        return None

    def codegen(context, builder, signature, args):
        counter = context.make_array(signature.args[0])(context, builder, args[0]).data
        one = ir.Constant(counter.type.pointee, 1)
        return builder.atomic_rmw("add", counter, one, "monotonic")
    return types.intp(taken), codegen
