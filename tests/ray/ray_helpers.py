"""Helpers shared by the Ray tests (imported as `ray_helpers`)."""

from __future__ import annotations

import os
from pathlib import Path

LONG_CONTEXT = 1024  # room for a request that runs for seconds (the kill test needs one)


def ray_processes(session_dir: str) -> list[str]:
    """Command lines of the live processes that belong to the Ray session in `session_dir`."""
    name = os.path.basename(session_dir)
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            if name in cmdline or name in Path(f"/proc/{pid}/environ").read_bytes().decode(
                    errors="replace"):
                found.append(f"{pid}: {cmdline[:120]}")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return [p for p in found if not p.startswith(f"{os.getpid()}:")]
