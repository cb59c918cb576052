"""docs/step_by_step.ipynb runs top to bottom on a fresh kernel, so it never rots (its outputs
are not committed: this test checks that too)."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "docs" / "step_by_step.ipynb"


def test_the_step_by_step_notebook_runs(monkeypatch):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), \
        "commit the notebook without outputs"
    # The kernel imports nanovllm as this checkout's, like the tests' own processes.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        filter(None, [str(NOTEBOOK.parents[1]), os.environ.get("PYTHONPATH")])))
    client = NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                     for o in c.outputs)
    assert "step 1:" in text and "preempted" in text and "after layer" in text
