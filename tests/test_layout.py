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
