"""One docstring style across the three packages: every public function and class has a
docstring, and a public function that raises says so ("Raises ...")."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [
    ROOT / "packages" / "vl-core" / "src" / "vl_core",
    ROOT / "packages" / "clip4dm" / "src" / "clip4dm",
    ROOT / "packages" / "egtr" / "src" / "egtr",
]


def _public_modules(root: Path) -> list[Path]:
    files = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts
        if any(p.startswith("_") and p not in ("__init__.py", "__main__.py") for p in parts):
            continue
        files.append(path)
    return files


def _raises(function: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """Whether the function's own body (not nested functions) raises something other than
    ``AssertionError`` (unreachable markers) or ``NotImplementedError``."""
    stack: list[ast.AST] = list(function.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            continue
        if isinstance(node, ast.Raise) and node.exc is not None:
            target = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            name = target.id if isinstance(target, ast.Name) else ""
            if name not in ("AssertionError", "NotImplementedError"):
                return True
        stack.extend(ast.iter_child_nodes(node))
    return False


def _problems(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: list[str] = []

    def visit(body: list[ast.stmt], prefix: str) -> None:
        for node in body:
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            if node.name.startswith("_"):
                continue
            doc = ast.get_docstring(node) or ""
            where = f"{path.relative_to(ROOT)}:{node.lineno} {prefix}{node.name}"
            if not doc:
                found.append(f"{where}: no docstring")
            if isinstance(node, ast.ClassDef):
                visit(node.body, f"{prefix}{node.name}.")
            elif doc and _raises(node) and "raise" not in doc.lower():
                found.append(f"{where}: raises, but the docstring does not say what")

    visit(tree.body, "")
    return found


@pytest.mark.parametrize("root", SOURCES, ids=lambda p: p.name)
def test_public_docstrings(root: Path) -> None:
    problems = [problem for path in _public_modules(root) for problem in _problems(path)]
    assert problems == [], "\n".join(problems)
