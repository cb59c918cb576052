"""An editor's go-to-definition finds every part of the package, from the repository root (as a
reader opens the project) and from the environment `make setup` installs into.

jedi is the engine behind several editors. nanovllm/model, nanovllm/runner, nanovllm/server
and nanovllm/scripts are symlinks to the top-level folders, so the package is one plain tree:
no import hook that static tools cannot read.
"""

from __future__ import annotations

import sys
from pathlib import Path

import jedi
import pytest

ROOT = Path(__file__).resolve().parent.parent

# One name from each subpackage, and the file that defines it.
NAMES = [
    ("nanovllm.runner.model_runner", "NativeModelRunner", "runner/model_runner.py"),
    ("nanovllm.model.architectures.gpt2_reference", "layer_norm",
     "model/architectures/gpt2_reference.py"),
    ("nanovllm.model.kernels.shared", "exp32", "model/kernels/shared.py"),
    ("nanovllm.model.checkpoint.loader", "load_gpt2", "model/checkpoint/loader.py"),
    ("nanovllm.server.app", "build_app", "server/app.py"),
    ("nanovllm.scripts.benchmark", "run", "scripts/benchmark.py"),
    ("nanovllm.values.sampling_params", "SamplingParams", "nanovllm/values/sampling_params.py"),
    ("nanovllm.engine", "LLMEngine", "nanovllm/engine.py"),
]


def environment() -> jedi.api.environment.Environment:
    return jedi.create_environment(sys.prefix, safe=False)


@pytest.mark.parametrize("project", ["repository root", "elsewhere"])
@pytest.mark.parametrize("module, name, file", NAMES, ids=[n[0] for n in NAMES])
def test_go_to_definition_resolves(tmp_path, project, module, name, file):
    source = f"from {module} import {name}\n{name}\n"
    where = ROOT if project == "repository root" else tmp_path
    script = jedi.Script(source, path=where / "reader.py", project=jedi.Project(where),
                         environment=environment())
    found = script.goto(2, 1, follow_imports=True)
    assert [Path(d.module_path).resolve() for d in found] == [ROOT / file], found
    assert found[0].name == name
