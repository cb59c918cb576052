"""The docs point at code that exists: every function the tour names is defined where its link
says, every relative link of the README and docs/ leads to a file, and the tour's pictures are
what the engine draws today."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from nanovllm.scripts.lab import tour_pictures

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted((ROOT / "docs").glob("*.md"))
TOUR = ROOT / "docs" / "tour.md"
LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")
DOTTED_NAME = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def links(doc: Path) -> list[tuple[str, str]]:
    """(text, target) of each relative link, the target without its #anchor."""
    found = []
    for text, target in LINK.findall(doc.read_text()):
        if not re.match(r"^[a-z]+:", target) and not target.startswith("#"):
            found.append((text, target.split("#")[0]))
    return found


def definitions(source: Path) -> set[str]:
    """Names a module defines: its top-level functions and classes, and Class.method."""
    names = set()
    for node in ast.parse(source.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        if isinstance(node, ast.ClassDef):
            names |= {f"{node.name}.{item.name}" for item in node.body
                      if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef))}
    return names


def code_links(doc: Path) -> list[tuple[str, Path]]:
    """(name, file) of each link whose text names a function or class in a .py file."""
    out = []
    for text, target in links(doc):
        name = text.strip("`").removesuffix("()")
        if target.endswith(".py") and DOTTED_NAME.match(name):
            out.append((name, (doc.parent / target).resolve()))
    return out


def test_the_tour_names_many_functions():
    assert len(code_links(TOUR)) >= 40


@pytest.mark.parametrize("doc", [ROOT / "README.md", *DOCS], ids=lambda p: p.name)
def test_every_relative_link_leads_to_a_file(doc):
    missing = [target for _, target in links(doc) if not (doc.parent / target).exists()]
    assert missing == []


@pytest.mark.parametrize("doc", [ROOT / "README.md", *DOCS], ids=lambda p: p.name)
def test_every_linked_function_is_defined_in_its_file(doc):
    missing = [f"{name} in {path.relative_to(ROOT)}" for name, path in code_links(doc)
               if name not in definitions(path)]
    assert missing == []


def anchor(heading: str) -> str:
    """GitHub's anchor for a Markdown heading: lower case, punctuation dropped, spaces as -."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("doc", [ROOT / "README.md", *DOCS], ids=lambda p: p.name)
def test_every_anchor_names_a_heading(doc):
    """`file.md#section` and `#section` links lead to a heading that exists."""
    missing = []
    for _, target in LINK.findall(doc.read_text()):
        path, _, name = target.partition("#")
        if not name or re.match(r"^[a-z]+:", path) or not (path == "" or path.endswith(".md")):
            continue
        file = (doc.parent / path) if path else doc
        headings = re.findall(r"^#+ (.+)$", file.read_text(), flags=re.M)
        if name not in {anchor(h) for h in headings}:
            missing.append(target)
    assert missing == []


# The dated lab diary left docs/performance.md: nothing may point into it any more.
DIARY_REFERENCE = re.compile(r"\b(sessions? \d+|entry \d+)|performance\.md ?§", re.I)


def test_nothing_points_at_a_diary_entry():
    kinds = {".py", ".md", ".toml", ".js", ".html", ".ipynb"}
    files = [p for p in ROOT.rglob("*") if p.suffix in kinds and p.is_file()
             and not {".venv", ".git", "node_modules"} & set(p.parts)]
    found = [f"{p.relative_to(ROOT)}: {m.group(0)}" for p in files
             for m in DIARY_REFERENCE.finditer(p.read_text(errors="replace"))
             if p != Path(__file__)]
    assert found == []


def test_a_misnamed_function_is_caught(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text(f"[`Scheduler.schedul`]({ROOT}/nanovllm/scheduler.py) "
                   f"[`Scheduler.schedule`]({ROOT}/nanovllm/scheduler.py)")
    names = [name for name, path in code_links(doc) if name not in definitions(path)]
    assert names == ["Scheduler.schedul"]


def test_the_tours_pictures_are_what_the_engine_draws_today(tmp_path):
    """The script fills every picture block of the tour, and the result is the tour as committed.
    After a scheduling change, run `python -m nanovllm.scripts.lab.tour_pictures` and read the tour
    again: its prose describes these pictures."""
    tour = tmp_path / "tour.md"
    tour.write_text(re.sub(r"```text\n.*?```\n", "", TOUR.read_text(), flags=re.S))
    assert tour.read_text().count("```text") == 0
    assert tour_pictures.main(["--tour", str(tour)]) == 0
    assert tour.read_text() == TOUR.read_text()
