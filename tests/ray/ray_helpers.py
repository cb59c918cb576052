"""Helpers shared by the Ray tests (imported as `ray_helpers`)."""

from __future__ import annotations

import os
from pathlib import Path

LONG_CONTEXT = 1024  # room for a request that runs for seconds (the kill test needs one)
# Room for a request that outlives any test's look at it: decoding 7,000 tokens takes the
# tiny model tens of seconds on an idle machine, minutes on a loaded one.
ENDLESS_CONTEXT = 8192


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



def stat_fields(pid: int | str) -> list[str]:
    """/proc/PID/stat after the command name (which may hold spaces): state, ppid, ..."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2:].split()


def process_tree(pid: int) -> set[tuple[int, int]]:
    """(pid, start time) of `pid` and all its descendants: what a service manager's control
    group holds of a service started as `pid`. The start time tells a reused pid apart."""
    children: dict[int, list[tuple[int, int]]] = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = stat_fields(entry)
        except (FileNotFoundError, ProcessLookupError):
            continue
        children.setdefault(int(fields[1]), []).append((int(entry), int(fields[19])))
    tree, todo = {(pid, int(stat_fields(pid)[19]))}, [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            tree.add(child)
            todo.append(child[0])
    return tree


def running(pid: int, started: int) -> bool:
    """Whether that process still runs (a zombie does not; a reused pid is another process)."""
    try:
        fields = stat_fields(pid)
    except (FileNotFoundError, ProcessLookupError):
        return False
    return int(fields[19]) == started and fields[0] != "Z"


def still_running(processes: set[tuple[int, int]]) -> list[str]:
    """Command lines of those of `processes` that still run."""
    left = []
    for pid, started in processes:
        try:
            if running(pid, started):
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                left.append(f"{pid}: {cmdline.decode()[:120]}")
        except (FileNotFoundError, ProcessLookupError):
            continue
    return left


def signal_all(processes: set[tuple[int, int]], sig: int) -> None:
    """Send `sig` to those of `processes` still running."""
    for pid, started in processes:
        try:
            if running(pid, started):
                os.kill(pid, sig)
        except ProcessLookupError:
            continue
