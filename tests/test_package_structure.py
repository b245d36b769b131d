"""The package's shape: no import cycle, few top-level modules, no overlong file; every doc,
``src/`` path and dotted ``contrahash.…`` name cited exists; the README says what is true."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

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


def _doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


#: a path from the repository root (src/, tests/, benchmarks/, configs/), or a module path
#: inside the package written with its folder (``methods/fdbh.py``, ``cli/progress.py``)
#: (a template such as ``sweep-<name>.yaml`` is not a path)
REPO_PATH = re.compile(r"(?<![\w./-])(?:src|tests|benchmarks|configs)/[\w./*-]*[\w/*](?![\w./*<-])")
PACKAGE_PATH = re.compile(r"(?<![\w./-])(?:[a-z_]+/)+[a-z_]+\.py\b")


def test_every_src_path_in_the_docs_exists():
    """A ``src/…`` (or tests/, benchmarks/, configs/) path written in README.md or
    docs/*.md names a file or folder that exists (globs must match something), and so does a
    package path such as ``methods/fdbh.py``."""
    missing = []
    for doc in _doc_files():
        text = doc.read_text()
        for cited in REPO_PATH.findall(text):
            found = list(ROOT.glob(cited)) if "*" in cited else (ROOT / cited).exists()
            if not found:
                missing.append(f"{doc.relative_to(ROOT)} cites {cited}")
        for cited in PACKAGE_PATH.findall(text):
            if not REPO_PATH.match(cited) and not any(
                    (base / cited).exists() for base in (ROOT, SRC / PACKAGE, SRC)):
                missing.append(f"{doc.relative_to(ROOT)} cites {cited}")
    assert not missing, "\n".join(missing)


DOTTED = re.compile(r"(?<![\w./-])contrahash(?:\.[A-Za-z_]\w*)+")


def resolves(dotted: str) -> bool:
    """Whether ``dotted`` names a module of the package, or an attribute (or a dataclass
    field) reached from one."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            fields = getattr(obj, "__dataclass_fields__", {}) if isinstance(obj, type) else {}
            try:
                obj = getattr(obj, name)
                continue
            except (AttributeError, ImportError):  # ImportError: a moved module's message
                pass
            if name in fields:
                obj = fields[name]
            else:
                return False
        return True
    return False


def test_the_dotted_name_check_tells_real_names_from_stale_ones():
    assert resolves("contrahash.data.protocols.get_protocol")
    assert resolves("contrahash.config.TrainConfig.bits")  # a dataclass field
    assert resolves("contrahash.retrieval.index.HammingIndex.search")
    assert not resolves("contrahash.collection")  # moved to contrahash.retrieval
    assert not resolves("contrahash.data.no_such_loader")


def test_every_dotted_contrahash_name_resolves():
    """Every ``contrahash.x.y`` written in src/ (docstrings, comments, messages) or in the
    docs names a module or attribute that exists: after a move, stale names fail here."""
    stale = []
    for path in [*sorted((SRC / PACKAGE).rglob("*.py")), *_doc_files()]:
        for dotted in sorted(set(DOTTED.findall(path.read_text()))):
            if not resolves(dotted):
                stale.append(f"{path.relative_to(ROOT)} names {dotted}")
    assert not stale, "\n".join(stale)


#: modules directly under src/contrahash/ besides __init__.py: the rest lives in the subpackages
MAX_TOP_LEVEL_MODULES = 8
MAX_LINES = 600
#: files allowed over MAX_LINES, each with the phrase of its docstring that says why
LONG_FILES = {
    "data/augment.py": "one job",
}


def test_few_modules_sit_directly_in_the_package():
    top = sorted(p.name for p in (SRC / PACKAGE).glob("*.py") if p.name != "__init__.py")
    assert len(top) <= MAX_TOP_LEVEL_MODULES, f"{len(top)} top-level modules: {top}"


def test_no_file_is_over_600_lines_unless_its_one_job_needs_it():
    """A file over MAX_LINES does several jobs and should be split; the allow-list names the
    exceptions, and each says why in its own docstring."""
    long = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        lines = len(path.read_text().splitlines())
        rel = path.relative_to(SRC / PACKAGE).as_posix()
        if lines > MAX_LINES and rel not in LONG_FILES:
            long[rel] = lines
    assert not long, f"files over {MAX_LINES} lines (split them by job): {long}"
    for rel, phrase in LONG_FILES.items():
        doc = ast.get_docstring(ast.parse((SRC / PACKAGE / rel).read_text())) or ""
        assert phrase in doc, f"{rel} is allowed over {MAX_LINES} lines: its docstring says why"


# ----------------------------------------------------------------------------- the README
README = (ROOT / "README.md").read_text()


def _readme_code() -> str:
    return "\n".join(re.findall(r"```(?:bash|sh)?\n(.*?)```", README, re.S))


def test_readme_is_a_front_door():
    assert len(README.splitlines()) <= 250


def test_every_make_target_in_the_readme_is_the_makefiles():
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))
    named = set(re.findall(r"`?\bmake ([\w-]+)", README))
    assert {"test", "demo"} <= named
    assert named <= targets, f"README names make targets the Makefile lacks: {named - targets}"
    # the README's "every test" is what `make test` runs: ruff, then the whole pytest suite
    recipe = re.search(r"^test:.*?\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), re.M)
    assert recipe and "ruff check" in recipe.group(1)
    assert re.search(r"-m pytest\s*$", recipe.group(1), re.M), "make test runs every test"


def test_every_command_in_the_readme_exists():
    """Each ``contrahash <command> [<subcommand>]`` in the README's code blocks and prose is a
    command of the program."""
    from conftest import cli_commands

    commands = set(cli_commands())
    groups = {words.split()[0] for words in commands if " " in words}
    prose = re.sub(r"```.*?```", "", README, flags=re.S)
    spans = re.findall(r"`([^`\n]+)`", prose)
    used = re.findall(r"\bcontrahash ((?:--[\w-]+ \w+ )?[a-z][\w-]*(?: [a-z][\w-]*)?)",
                      _readme_code() + "\n" + "\n".join(spans))
    assert len(used) >= 10
    wrong = set()
    for words in used:
        words = re.sub(r"^--[\w-]+ \w+ ", "", words)  # a global option first
        first, _, second = words.partition(" ")
        if first in groups:
            if f"{first} {second}" not in commands:
                wrong.add(words)
        elif first not in commands:
            wrong.add(words)
    assert not wrong, f"README runs commands that do not exist: {sorted(wrong)}"


def test_the_readme_layout_names_every_subpackage_and_nothing_else():
    block = re.search(r"## Layout\n+```\n(.*?)```", README, re.S)
    assert block, "README.md has a ## Layout block"
    lines = block.group(1).splitlines()
    assert lines[0].strip() == "src/contrahash/"
    inner = "\n".join(line for line in lines[1:len(lines)]
                      if line.startswith(" "))  # the indented lines: inside the package
    named_dirs = set(re.findall(r"\b(\w+)/", inner))
    named_modules = set(re.findall(r"\b(\w+\.py)\b", inner))
    package = SRC / PACKAGE
    subpackages = {p.parent.name for p in package.glob("*/__init__.py")}
    modules = {p.name for p in package.glob("*.py") if p.name != "__init__.py"}
    assert named_dirs == subpackages, (f"missing {sorted(subpackages - named_dirs)}, "
                                       f"not in the package {sorted(named_dirs - subpackages)}")
    assert named_modules == modules, (f"missing {sorted(modules - named_modules)}, "
                                      f"not in the package {sorted(named_modules - modules)}")
    for line in lines[1:]:
        if not line.startswith(" ") and line.strip():
            top = line.split()[0].rstrip("/")
            assert (ROOT / top).exists(), f"README's layout names {top}/, which does not exist"


PUBLIC_NAMES = {  # what configs, tests and users import: kept across any split
    "contrahash.models.backbones": ["BACKBONES", "Backbone", "WeightsNotFoundError",
                                    "build_backbone", "load_state_dict_file"],
    "contrahash.data.protocols": ["PROTOCOLS", "Split", "Protocol", "assign_nuswide",
                                  "get_protocol", "load_split", "make_split", "save_split",
                                  "split_custom", "split_for_run", "split_nuswide21"],
    "contrahash.data": ["DataError", "ImageDataset", "default_cache_dir", "load_source",
                        "load_image_folder", "load_list_file", "load_packed_npz", "load_digits",
                        "load_cifar_pickles", "parse_list_file", "LAZY_THRESHOLD"],
    "contrahash.data.sources": ["FOLDER_LABELS", "NoReadableImages", "load_files", "load_source",
                                "walk_image_files"],
}


@pytest.mark.parametrize("module", sorted(PUBLIC_NAMES))
def test_public_names_users_and_configs_use_still_import(module):
    missing = [n for n in PUBLIC_NAMES[module] if not hasattr(importlib.import_module(module), n)]
    assert not missing, f"{module} lost {missing}"
