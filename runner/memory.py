"""Keeping the memory of one step's activations for the next.

First touch of fresh memory is slow on small VMs, so glibc is asked to keep freed
activation memory instead of returning it to the OS.
"""

from __future__ import annotations

import ctypes

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters


def keep_freed_memory() -> None:
    """Asks glibc to keep the memory of freed activations for the next step.

    By default glibc maps large arrays afresh and returns freed memory to the OS, so every
    step would touch new pages, and first touch is slow on small VMs (long prefills pay for it
    most). Arrays up to 32 MiB (glibc's maximum) then come from the heap, which is never
    trimmed. No-op where the C library is not glibc.
    """
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return
    mallopt(M_MMAP_THRESHOLD, 32 << 20)
    mallopt(M_TRIM_THRESHOLD, 1 << 30)
