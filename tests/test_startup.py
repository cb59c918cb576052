"""`nanovllm serve` from an empty numba cache (a newcomer's first start) and again from the cache
it filled: both answer /health, the log says what start-up compiles (decode and prefill
attention's kernels in helper processes beside the rest, float32 only for float32 weights;
nothing to compile from the cache), and the times are printed with the machine's load
(`pytest -s`; no timed assertion: the figures depend on the machine and its load)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_serve(cache_dir, log_path) -> float:
    """Seconds from starting `nanovllm serve gpt2 --load-format dummy` until /health answers."""
    port = free_port()
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache_dir)}
    start = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "nanovllm.cli", "serve", "gpt2",
                                 "--load-format", "dummy", "--port", str(port)],
                                env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        while True:
            assert proc.poll() is None, log_path.read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5):
                    return time.monotonic() - start
            except OSError:
                time.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(60)


@pytest.mark.slow
def test_cold_and_warm_start_of_serve(tmp_path):
    cold = start_serve(tmp_path / "numba", tmp_path / "cold.log")
    cold_load = os.getloadavg()[0]
    warm = start_serve(tmp_path / "numba", tmp_path / "warm.log")
    log, warm_log = (tmp_path / "cold.log").read_text(), (tmp_path / "warm.log").read_text()
    assert "compiling float32 linear kernels" in log
    assert "compiling decode attention's kernels in a helper process" in log
    assert "compiling prefill attention's kernels in a helper process" in log
    assert "compiling int8" not in log and "compiling bfloat16" not in log  # (float32 weights)
    assert "helper process" not in warm_log  # (all cached: nothing to compile beside)
    print(f"\nnanovllm serve gpt2 --load-format dummy: /health after {cold:.1f} s from an "
          f"empty numba cache (load average {cold_load:.1f}), {warm:.1f} s from the cache it "
          f"filled (load average {os.getloadavg()[0]:.1f}; {os.cpu_count()} CPUs)")
