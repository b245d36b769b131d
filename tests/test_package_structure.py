"""The package's shape: no import cycle among its own modules, and every cited doc exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = "contrahash"


def _module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's own modules that ``name`` imports, at any depth of its code."""
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                       for alias in node.names]
        else:
            continue
        out.update(t for t in targets if t in known and t != name)
    return out


def find_import_cycle(src: Path, package: str = PACKAGE) -> list[str] | None:
    """A cycle of imports among ``package``'s modules under ``src`` (imports inside functions
    included), or None."""
    modules = {_module_name(p, src): p for p in sorted((src / package).rglob("*.py"))}
    graph = {name: _imports(name, path, set(modules)) for name, path in modules.items()}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for name in sorted(graph):
        if name not in state and (cycle := visit(name)):
            return cycle
    return None


def test_the_package_has_no_import_cycle():
    cycle = find_import_cycle(SRC)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_check_finds_a_cycle(tmp_path):
    pkg = tmp_path / PACKAGE
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from contrahash.b import g\n")
    (pkg / "b.py").write_text("from contrahash import a\n")
    assert find_import_cycle(tmp_path) == ["contrahash.a", "contrahash.b", "contrahash.a"]
    (pkg / "b.py").write_text("import json\n")
    assert find_import_cycle(tmp_path) is None


CITATION = re.compile(r"\bdocs/([A-Za-z0-9_./-]+\.(?:md|png))")
SECTION = re.compile(r'docs/(\w+\.md), "([^"]+)"')


def _cited_files() -> list[Path]:
    files = list((SRC / PACKAGE).rglob("*.py")) + [ROOT / "README.md"]
    files += list((ROOT / "docs").glob("*.md")) + list((ROOT / "benchmarks").glob("*"))
    return [f for f in files if f.is_file()]


def test_every_cited_doc_exists():
    missing = []
    for path in _cited_files():
        for match in CITATION.finditer(path.read_text(errors="replace")):
            if not (ROOT / "docs" / match.group(1)).exists():
                missing.append(f"{path.relative_to(ROOT)} cites docs/{match.group(1)}")
    assert not missing, "\n".join(missing)


def test_every_cited_section_exists():
    missing = []
    for path in _cited_files():
        for match in SECTION.finditer(path.read_text(errors="replace")):
            doc, section = ROOT / "docs" / match.group(1), match.group(2)
            headings = {line.lstrip("#").strip() for line in doc.read_text().splitlines()
                        if line.startswith("#")} if doc.exists() else set()
            if section not in headings:
                missing.append(f"{path.relative_to(ROOT)} cites {match.group(0)}")
    assert not missing, "\n".join(missing)


def test_readme_is_a_front_door():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250
