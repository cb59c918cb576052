"""A bare read: an array streamed through vector registers by numba's threads and nothing done
with it, the fastest any kernel could read those bytes here. `read_roof` times it against the
memory roof; `profile_decode --roof` reads a step's weights with it. (Compiled only: the read
is `f32_dot.broadcast_tile`, LLVM IR. The scripts importing it set the thread pools first.)"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from nanovllm.model.kernels.f32_dot import broadcast_tile

LANES = 16
VECTORS = 4  # vectors read per step: four independent accumulators
ROW_BYTES = 4 * LANES * VECTORS  # what one step reads


@njit(cache=True, nogil=True)
def read_rows(a, start, end, ones, acc):
    """Reads a[start:end] ([rows, VECTORS * LANES] float32) through broadcast_tile."""
    broadcast_tile(LANES, 1, VECTORS, 4, ones.ctypes.data, 0,
                   a.ctypes.data + start * a.shape[1] * 4, a.shape[1] * 4, LANES * 4,
                   end - start, acc.ctypes.data, 0)


@njit(cache=True, nogil=True, parallel=True)
def read_split(a, parts, ones):
    """a read by `parts` threads, each a contiguous share of its rows."""
    per = a.shape[0] // parts
    for p in prange(parts):
        acc = np.empty(VECTORS * LANES, np.float32)
        read_rows(a, p * per, (p + 1) * per, ones, acc)


def as_rows(array: np.ndarray) -> np.ndarray:
    """The bytes of `array` (any dtype and shape) as the float32 rows `read_split` takes, but
    for the last ROW_BYTES - 1 at most (a copy if it is not contiguous)."""
    flat = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
    return flat[:flat.size // ROW_BYTES * ROW_BYTES].view(np.float32).reshape(-1, ROW_BYTES // 4)
