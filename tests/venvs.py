"""Virtual environments some tests run a client or a kernel in, apart from the main venv: the
lowest versions pyproject.toml allows, or a library that cannot share the main venv's versions.

Each is built once per set of requirements, in the cache (pip's own cache makes a rebuild
cheap); a marker file says it is complete.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

from nanovllm.model.checkpoint.dummy import cache_root


def venv_with(name: str, requirements: list[str]) -> Path:
    """The python of a venv holding `requirements` (pip's resolution of them), made once."""
    key = hashlib.sha256(" ".join([sys.version, *requirements]).encode()).hexdigest()
    venv = cache_root() / "test-venvs" / f"{name}-{key[:12]}"
    python = venv / "bin" / "python"
    if not (venv / "complete").exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", *requirements],
                       check=True)
        (venv / "complete").write_text(" ".join(requirements))
    return python
