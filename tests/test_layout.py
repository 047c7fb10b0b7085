"""Rules of the layout that always hold (STYLE.md): mmcore never imports streamlit; pages never import torch."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_mmcore_never_imports_streamlit():
    offenders = [p for p in (ROOT / "mmcore").rglob("*.py") if "streamlit" in _imports(p)]
    assert offenders == []


def test_pages_never_touch_torch_captum_or_chroma():
    scripts = [ROOT / "app.py", *(ROOT / "pages").rglob("*.py")]
    offenders = {
        str(p.relative_to(ROOT)): sorted(_imports(p) & {"torch", "captum", "chromadb"}) for p in scripts if p.exists()
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_weights_never_unpickle():
    for path in (ROOT / "mmcore").rglob("*.py"):
        text = path.read_text()
        for line in text.splitlines():
            if "torch.load(" in line:
                assert "weights_only=True" in line, f"{path}: {line.strip()}"
            assert "pickle.load" not in line, f"{path}: {line.strip()}"


# ---- the import graph of mmcore (issue: commands apart from the library, no cycles, small modules) ----

MAX_LINES = 600
DATA_TABLES: set[str] = set()  # modules that are mostly data tables may be longer; none is today


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _mmcore_imports(path: Path) -> set[str]:
    """mmcore modules `path` imports anywhere (functions included), except under `if TYPE_CHECKING:`."""
    tree = ast.parse(path.read_text(), filename=str(path))
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for child in node.body for n in ast.walk(child))
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("mmcore"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            if base.startswith("mmcore"):
                found.add(base)
                found.update(f"{base}.{a.name}" for a in node.names)
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in (ROOT / "mmcore").rglob("*.py")}
    return {name: {m for m in _mmcore_imports(path) if m in modules and m != name} for name, path in modules.items()}


def test_library_modules_never_import_the_command_layer():
    entry = ("mmcore.commands", "mmcore.__main__")  # the command layer and `python -m mmcore`, above the library
    library = {m: deps for m, deps in _graph().items() if not m.startswith(entry)}
    offenders = {
        m: sorted(d for d in deps if d.startswith(("mmcore.commands", "mmcore.cli"))) for m, deps in library.items()
    }
    assert {m: d for m, d in offenders.items() if d} == {}
    assert not (ROOT / "mmcore" / "cli.py").exists()


def test_mmcore_has_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if dep.startswith("mmcore.commands") or dep == "mmcore":  # the command layer sits above the library
                continue
            if state.get(dep) == 1:
                cycles.append(path[path.index(dep) :] + [dep] if dep in path else [node, dep])
            elif dep not in state:
                visit(dep, [*path, dep])
        state[node] = 2

    for module in sorted(graph):
        if module not in state and not module.startswith("mmcore.commands"):
            visit(module, [module])
    assert cycles == []


def test_no_module_is_over_600_lines():
    long = {
        str(p.relative_to(ROOT)): n
        for p in (ROOT / "mmcore").rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES and _module_name(p) not in DATA_TABLES
    }
    assert long == {}


def test_every_module_has_its_test_file():
    """Tests mirror the tree: tests/mmcore/test_<module>.py for each module, one file per sub-package."""
    tested = {p.stem.removeprefix("test_") for p in (ROOT / "tests" / "mmcore").glob("test_*.py")}
    names = {p.stem for p in (ROOT / "mmcore").glob("*.py") if p.stem not in ("__init__", "__main__")}
    names |= {p.name for p in (ROOT / "mmcore").iterdir() if (p / "__init__.py").is_file() and p.name != "configs"}
    assert sorted(names - tested) == []


def test_test_file_basenames_are_unique():
    """pytest imports test files by basename (rootdir import mode, no __init__.py): two test_x.py in different
    folders stop collection with "import file mismatch" (it stopped CI once)."""
    seen: dict[str, list[str]] = {}
    for path in (ROOT / "tests").rglob("test_*.py"):
        seen.setdefault(path.name, []).append(str(path.relative_to(ROOT)))
    assert {name: paths for name, paths in seen.items() if len(paths) > 1} == {}
