"""e**x in float32, for the compiled kernels: numba calls libm's scalar expf, which does not
vectorize (no SVML here) and made a compiled GELU slower than numpy's. This one is a handful
of multiply-adds and integer operations that vectorize, within 2 float32 ulps of exp (tested).

numba's on-disk cache does not notice edits to this module in the kernels that call it
(`model/attention.py`, `model/gpt2.py`): after changing it, delete `model/__pycache__/*.nbi` and
`*.nbc`.
"""

from __future__ import annotations

import numpy as np
from numba import njit

LOG2_E = np.float32(1.4426950408889634)
LN2_HI = np.float32(0.693145751953125)  # ln 2 in two parts: n * LN2_HI is exact for |n| < 2**9,
LN2_LO = np.float32(1.428606765330187e-06)  # so the reduced argument keeps float32 precision

# No reassociation here, whatever the callers allow: it could fold the two parts of ln 2 into
# one. (A called function keeps its flags when LLVM inlines it; numba's own inline="always"
# would compile it with the caller's, so exp32 does not ask for that.)
EXP_MATH = {"contract", "arcp", "nsz"}


@njit(fastmath=EXP_MATH, cache=True, nogil=True)
def exp32(t):
    """e**t as 2**n * e**r, |r| <= ln(2)/2, with e**r as its Taylor polynomial of degree 7 (whose
    error is below float32's rounding). Outside [-87, 88], where 2**n would leave float32's normal
    range: 0 below, inf above (e**88 is 1.7e38; float32 ends at 3.4e38)."""
    if t > np.float32(88.0):
        return np.float32(np.inf)
    if t < np.float32(-87.0):
        return np.float32(0.0)
    n = np.floor(t * LOG2_E + np.float32(0.5))
    r = (t - n * LN2_HI) - n * LN2_LO
    p = np.float32(1 / 5040)
    for c in (1 / 720, 1 / 120, 1 / 24, 1 / 6, 1 / 2, 1.0, 1.0):
        p = p * r + np.float32(c)
    return p * np.uint32((np.int32(n) + 127) << 23).view(np.float32)
