"""Shared pieces of the two benchmarks: summaries of repeated measurements, thread control, and a
description of the machine, so every number printed says where it came from."""

from __future__ import annotations

import json
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(slots=True)
class Summary:
    """Median and spread of repeated measurements (the runs are kept for the JSON output)."""
    median: float
    min: float
    max: float
    runs: list[float]

    @classmethod
    def of(cls, values: list[float]) -> Summary | None:
        if not values:
            return None
        return cls(float(np.median(values)), float(min(values)), float(max(values)),
                   [float(v) for v in values])

    def fmt(self, digits: int = 0) -> str:
        if len(self.runs) == 1:
            return f"{self.median:,.{digits}f}"
        return f"{self.median:,.{digits}f} [{self.min:,.{digits}f}-{self.max:,.{digits}f}]"


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else 0.0


def parse_int_list(text: str) -> list[int]:
    """'1,8,32' -> [1, 8, 32]; for argparse `type=`."""
    import argparse

    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"values must not be negative, got {text!r}")
    return values


def render_table(rows: list[list[str]]) -> str:
    """Right-aligned columns, the first row a header underlined with dashes."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# --------------------------------------------------------------------------- threads


def blas_info() -> list[dict]:
    """numpy's BLAS (and any OpenMP) thread pools, via threadpoolctl when it is installed."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    keys = ("user_api", "internal_api", "version", "num_threads", "architecture", "filepath")
    return [{k: pool.get(k) for k in keys} for pool in threadpool_info()]


def default_threads() -> int:
    pools = [p for p in blas_info() if p["user_api"] == "blas"]
    return int(pools[0]["num_threads"]) if pools else (os.cpu_count() or 1)


def limit_blas_threads(threads: int | None):
    """Caps numpy's BLAS pool at `threads` for as long as the returned object lives (None: no-op).

    Without threadpoolctl the pool cannot be resized after numpy has started; we say so.
    """
    if threads is None:
        return None
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        print("warning: threadpoolctl is not installed, so --threads cannot resize numpy's BLAS "
              "pool; set OMP_NUM_THREADS / OPENBLAS_NUM_THREADS before starting instead",
              file=sys.stderr)
        return None
    return threadpool_limits(limits=threads, user_api="blas")


# --------------------------------------------------------------------------- environment


def environment(threads: int | None = None) -> dict:
    env = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "numpy": np.__version__,
        "blas": [p for p in blas_info() if p["user_api"] == "blas"],
        "threads": threads if threads is not None else default_threads(),
        # Other processes skew every number (multi-threaded BLAS worst of all): say how busy.
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
    try:
        import nanovllm

        env["nanovllm"] = nanovllm.__version__
    except (ImportError, AttributeError):
        pass
    return env


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def describe_environment(env: dict) -> str:
    blas = ", ".join(f"{p['internal_api']} {p['version']} ({p['architecture']}, "
                     f"{p['num_threads']} threads)" for p in env["blas"]) or "unknown (no threadpoolctl)"
    lines = [f"machine: {env['processor']}, {env['cpu_count']} CPUs, {env['platform']}, "
             f"load average {env['load_average_1min']} at the start",
             f"python {env['python']}, numpy {env['numpy']}, BLAS: {blas}; "
             f"benchmark threads: {env['threads']}"]
    if "torch" in env:
        lines.append(f"torch {env['torch']} ({env['torch_threads']} threads), "
                     f"transformers {env['transformers']}")
    return "\n".join(lines)


def write_json(data: dict, target: str) -> None:
    """`--json` output: to stdout for "-", else to the file named."""
    text = json.dumps(data, indent=2)
    if target == "-":
        print(text)
    else:
        Path(target).write_text(text + "\n")
        print(f"wrote {target}", file=sys.stderr)
