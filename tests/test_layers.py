"""Imports point one way, down the layers, and never in a circle.

Every import counts: module level, inside functions and under `if TYPE_CHECKING:` alike (a
type-only import still means the lower layer knows the upper one). Each module is read with
`ast`, not imported, so the test sees imports that never run.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DIRS = {"nanovllm": "nanovllm", "nanovllm.model": "model", "nanovllm.runner": "runner",
                "nanovllm.server": "server", "nanovllm.scripts": "scripts"}

# Lowest first, by folder (or file) in the repository. A module belongs to the layer of the
# longest listed path that holds it; each layer imports only its own and lower layers.
LAYERS = [
    ("platform", ["model/platform"]),            # the CPU's instructions, the thread pools
    ("weight formats", ["model/weights"]),       # int8, bfloat16, packed weights in memory
    ("kernels", ["model/kernels"]),              # compiled loops, LLVM IR, what they share
    ("layers", ["model/layers"]),                # linear, norms, attention, ... over the kernels
    ("architectures", ["model/architectures"]),  # compositions, configs, plain references
    ("checkpoint", ["model/checkpoint"]),        # files on disk into a family's weights
    ("adapters", ["model/lora"]),                # LoRA adapters: files, checks, per-row updates
    ("family registry", ["model/architectures/registry.py", "model/__init__.py"]),
    ("plain values", ["nanovllm/values"]),       # parameters, prompts, outputs, errors, limits
    ("step contract", ["nanovllm/contract"]),    # what crosses between scheduler and runner
    ("runner", ["runner"]),                      # model runner, KV cache, sampler
    ("core", ["nanovllm"]),                      # engine, scheduler, blocks, ...
    ("server and scripts", ["server", "scripts"]),
    ("command line", ["nanovllm/cli.py", "server/__main__.py"]),
]
BARE_NAMES = {"model", "runner", "server", "scripts"}  # installed only under nanovllm.


def project_modules() -> dict[str, Path]:
    """Every module of the package, by dotted name, read from the real folders (nanovllm/model,
    nanovllm/runner, ... are symlinks to them)."""
    modules = {}
    for package, folder in PACKAGE_DIRS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            relative = path.relative_to(ROOT / folder)
            if any((ROOT / folder / part).is_symlink() for part in relative.parents):
                continue
            parts = [*relative.parent.parts, *([] if path.stem == "__init__" else [path.stem])]
            modules[".".join([package, *parts])] = path
    return modules


MODULES = project_modules()


def layer_of(module: str) -> int:
    path = MODULES[module].relative_to(ROOT).as_posix()
    best = max((prefix for _, prefixes in LAYERS for prefix in prefixes
                if path == prefix or path.startswith(prefix + "/")), key=len)
    return next(i for i, (_, prefixes) in enumerate(LAYERS) if best in prefixes)


def modules_in(layer: str) -> list[str]:
    index = [name for name, _ in LAYERS].index(layer)
    return [m for m in MODULES if layer_of(m) == index]


def imported_names(module: str, tree: ast.Module) -> list[tuple[str, int]]:
    """(module name, line) of every import in the file, wherever it sits; `from a import b`
    names a.b when that is a module, else a."""
    package = module if MODULES[module].stem == "__init__" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append((sub if sub in MODULES else base, node.lineno))
    return found


def lazy_exports(tree: ast.Module) -> list[tuple[str, int]]:
    """The modules behind a PEP 562 `_EXPORTS = {name: module}` table (nanovllm/__init__)."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "_EXPORTS" for t in node.targets):
            return [(v.value, node.lineno) for v in node.value.values]
    return []


def dynamic_imports(tree: ast.Module) -> list[int]:
    """Lines that import by a computed name (`__import__`, importlib.import_module)."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
            if name in ("__import__", "import_module"):
                lines.append(node.lineno)
    return lines


def build_graph() -> dict[str, list[tuple[str, int]]]:
    """module -> [(project module it imports, line)]."""
    graph = {}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(), str(path))
        edges = imported_names(module, tree) + lazy_exports(tree)
        graph[module] = [(target, line) for target, line in edges
                         if target in MODULES and target != module]
    return graph


GRAPH = build_graph()


def where(module: str, line: int) -> str:
    return f"{MODULES[module].relative_to(ROOT)}:{line}"


def test_every_module_has_a_layer():
    assert len(MODULES) > 40
    for module in MODULES:
        layer_of(module)  # raises if no prefix matches


def upward_imports(graph: dict[str, list[tuple[str, int]]]) -> list[str]:
    return [f"{where(m, line)}: {m} ({LAYERS[layer_of(m)][0]}) imports {target} "
            f"({LAYERS[layer_of(target)][0]})"
            for m, edges in graph.items() for target, line in edges
            if layer_of(target) > layer_of(m)]


def test_no_import_goes_up_a_layer():
    assert upward_imports(GRAPH) == []


def test_no_import_cycles():
    cycles = [" -> ".join(c) for c in find_cycles({m: [t for t, _ in e] for m, e in GRAPH.items()})]
    assert cycles == []


def find_cycles(graph: dict[str, list[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan)."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                cycles.append(sorted(component) + [sorted(component)[0]])

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_the_cycle_finder_finds_cycles():
    assert find_cycles({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": ["b"], "b": [], "c": ["a", "b"]}) == []


def test_upward_imports_are_seen_wherever_they_hide():
    """A function-level and a TYPE_CHECKING import count like a module-level one."""
    source = ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from nanovllm.engine "
              "import LLMEngine\ndef f():\n    from ..sequence import Sequence\n")
    found = imported_names("nanovllm.runner.sampler", ast.parse(source))
    assert found == [("typing", 1), ("nanovllm.engine", 3), ("nanovllm.sequence", 5)]


def test_no_import_by_computed_name():
    """Only a package's PEP 562 __init__ imports by name, from its literal _EXPORTS table
    (whose modules count as its imports above)."""
    dynamic = [where(m, line) for m, path in MODULES.items()
               if not lazy_exports(tree := ast.parse(path.read_text()))
               for line in dynamic_imports(tree)]
    assert dynamic == []
    assert {t for t, _ in GRAPH["nanovllm"]} >= {"nanovllm.llm", "nanovllm.engine"}


@pytest.mark.parametrize("layer", ["plain values", "step contract"])
def test_values_import_only_the_standard_library_numpy_and_values(layer):
    """The values and the contract are what every layer above shares: they hold no machinery."""
    allowed = set(modules_in("plain values")) | set(modules_in(layer))
    for module in modules_in(layer):
        tree = ast.parse(MODULES[module].read_text())
        outside = [name for name, _ in imported_names(module, tree)
                   if name.split(".")[0] not in sys.stdlib_module_names | {"numpy"}
                   and name not in allowed]
        assert outside == [], module


def test_the_layers_are_folders():
    """Each layer's modules live in its own folders: the tree shows the layers."""
    assert modules_in("plain values") and modules_in("step contract")
    assert all(MODULES[m].parent.name == "values" for m in modules_in("plain values"))
    assert all(MODULES[m].parent.name == "contract" for m in modules_in("step contract"))
    assert "nanovllm.model.checkpoint.loader" in MODULES  # loading apart from the math


MODEL_ROOMS = ["platform", "weights", "kernels", "layers", "architectures", "checkpoint", "lora"]


def test_model_is_in_rooms():
    """model/ holds its rooms and its package file only: a module beside them would have no
    layer of its own, and each room is a layer (the registry, which names the checkpoint loaders,
    is the one file of architectures/ above checkpoint/)."""
    loose = [m for m in MODULES if m.startswith("nanovllm.model.")
             and MODULES[m].relative_to(ROOT / "model").parts[0] not in MODEL_ROOMS]
    assert loose == []
    assert [name for name, _ in LAYERS[:7]] == ["platform", "weight formats", "kernels", "layers",
                                                 "architectures", "checkpoint", "adapters"]
    for room in MODEL_ROOMS:
        assert (ROOT / "model" / room / "__init__.py").read_text().startswith('"""'), room


def test_an_upward_import_inside_model_is_caught():
    """The rooms of model/ are layers like the folders above them: a kernel importing a layer,
    a layer an architecture, or a family's checkpoint loader the registry, each fails."""
    for lower, upper in [("kernels.shared", "layers.linear"), ("layers.linear", "architectures.gpt2"),
                         ("checkpoint.loader", "architectures.registry"),
                         ("weights.quant", "kernels.int8_gemm"), ("platform.cpu", "weights.quant")]:
        lower, upper = f"nanovllm.model.{lower}", f"nanovllm.model.{upper}"
        assert len(upward_imports({lower: [(upper, 1)]})) == 1, (lower, upper)
        assert upward_imports({upper: [(lower, 1)]}) == []


@pytest.mark.parametrize("folder", [*PACKAGE_DIRS.values(), "tests"])
def test_no_bare_top_level_imports(folder):
    """model/, runner/, ... install as nanovllm.model, ...: a bare `model` is someone else's."""
    bare = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level
                     else [])
            bare += [f"{path.relative_to(ROOT)}:{node.lineno}: {n}" for n in names
                     if n.split(".")[0] in BARE_NAMES]
    assert bare == []


def test_api_folders_import_no_other_api():
    """server/api/ holds one folder per API over the shared modules (server/serving.py, the
    chat path in server/chat/, server/api/openai.py): none reaches into another API's folder,
    or into the route table that lists them all (/invocations, made of two APIs, is the one
    module beside them that may)."""
    package = "nanovllm.server.api"

    def folder(module: str) -> str | None:
        inside = module.startswith(package + ".") and MODULES[module].parent.name != "api"
        return module.split(".")[3] if inside else None

    assert len({folder(m) for m in MODULES} - {None}) >= 4
    crossing = [f"{where(m, line)}: {m} imports {target}" for m in MODULES if folder(m)
                for target, line in GRAPH[m]
                if folder(target) not in (None, folder(m))
                or target in (package, f"{package}.table", f"{package}.invocations")]
    assert crossing == []
