"""model/platform/threads.py: importing it changes nothing; `configure_thread_pools()` sets the
pools' spin times unless the user set them; every entry point calls it before numpy loads (OpenBLAS
reads its setting then). Each case runs in a fresh interpreter, whose environment lacks the
settings: this test process has long configured itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from nanovllm.model.platform.threads import thread_pool_settings

SETTINGS = thread_pool_settings()

# Records the environment at the moment numpy is first imported, then runs the statement.
PROBE = """
import importlib.abc, json, os, sys
at_numpy = {}
class Probe(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "numpy" and not at_numpy:
            at_numpy.update({k: os.environ.get(k) for k in json.loads(sys.argv[2])})
        return None
sys.meta_path.insert(0, Probe())
before = dict(os.environ)
exec(sys.argv[1])
print(json.dumps({"numpy_loaded": "numpy" in sys.modules, "at_numpy": at_numpy,
                  "changed": {k: v for k, v in os.environ.items() if before.get(k) != v}}))
"""


def probe(statement: str, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in SETTINGS}
    run = subprocess.run([sys.executable, "-c", PROBE, statement, json.dumps(list(SETTINGS))],
                         env={**clean, **env}, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.splitlines()[-1])


def test_settings_are_the_three_spin_times():
    assert SETTINGS["GOMP_SPINCOUNT"] == "10000" and SETTINGS["OPENBLAS_THREAD_TIMEOUT"] == "16"
    assert ("OMP_WAIT_POLICY" in SETTINGS) == sys.platform.startswith("linux")


def test_importing_the_module_or_the_package_changes_no_environment_variable():
    result = probe("import nanovllm.model.platform.threads, nanovllm.model, nanovllm")
    assert result["changed"] == {} and not result["numpy_loaded"]


def test_configure_sets_each_setting_once_and_keeps_the_users():
    result = probe("from nanovllm.model.platform.threads import configure_thread_pools\n"
                   "configure_thread_pools()\nconfigure_thread_pools()", GOMP_SPINCOUNT="7")
    assert result["changed"] == {k: v for k, v in SETTINGS.items() if k != "GOMP_SPINCOUNT"}


@pytest.mark.parametrize("statement", [
    "import nanovllm.cli",                          # the `nanovllm` command
    "from nanovllm import LLM",                     # the library
    "from nanovllm.model import load_gpt2",         # the model package alone
    "import nanovllm.server.app",                   # the server, through nanovllm's names
    "import nanovllm.scripts.benchmark",            # the scripts that measure
    "import nanovllm.scripts.lab.profile_decode",
    "import nanovllm.scripts.lab.measure_memory",
    "import nanovllm.scripts.lab.beam_bench",       # it loads torch too
])
def test_entry_points_configure_the_pools_before_numpy_loads(statement):
    result = probe(statement)
    assert result["numpy_loaded"]
    assert result["at_numpy"] == SETTINGS


@pytest.mark.parametrize("first, warned", [("", False), ("import numpy\n", True)])
def test_the_library_warns_when_numpy_loaded_first(first, warned):
    """Too late for OpenBLAS: the settings cannot reach it, so the user is told how to fix it."""
    clean = {k: v for k, v in os.environ.items() if k not in SETTINGS}
    run = subprocess.run([sys.executable, "-c", first + "from nanovllm import SamplingParams"],
                         env=clean, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    assert ("numpy loaded before nanovllm" in run.stderr) == warned, run.stderr
    assert ("OPENBLAS_THREAD_TIMEOUT=16" in run.stderr) == warned
