"""Buffers laid out as the CPU reads them best: `CACHE_LINE`, the unit its caches move, and
`line_aligned`, a buffer starting at one. numpy aligns its buffers to 16 bytes only, and a
kernel's 64-byte load from there (a vector, an AMX tile's row) straddles two lines: an AMX tile
loaded so took several times as long. The AMX kernel's buffers (`model/kernels/block_amx.py`)
and the packed block weights (`block_quant.empty_packed`) start at a line.

numba's on-disk cache does not notice edits to this module in the kernels that call
`line_aligned` (`block_amx`): after changing it, delete `model/*/__pycache__/*.nbi` and `*.nbc`.
"""

from __future__ import annotations

import numpy as np
from numba import njit

CACHE_LINE = 64  # bytes


@njit(cache=True, nogil=True)
def line_aligned(nbytes):
    """An uninitialized uint8 array of `nbytes` starting at a cache line."""
    raw = np.empty(nbytes + CACHE_LINE, np.uint8)
    skip = (-raw.ctypes.data) % CACHE_LINE
    return raw[skip:skip + nbytes]
