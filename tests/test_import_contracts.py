"""The house rules of the code (docs/design.md §1): imports run one way (import-linter's contracts in
pyproject.toml: layers, no framework under the runtime, no cycles), no module reaches into another module's
underscore names, and nothing is imported inside a function except the optional heavy engines."""

from __future__ import annotations

import ast
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "onnxcam"
#: Engines a module may import inside the function that needs them: optional, heavy, or absent where the
#: runtime runs (ONNX Runtime is an extra: its import gives a one-line install hint).
LAZY_ALLOWED = {"torch", "torchvision", "pytorch_grad_cam", "tensorflow", "openvino", "ray", "onnxruntime",
                "transformers"}


def sources() -> list[pathlib.Path]:
    return sorted(PACKAGE.rglob("*.py"))


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_reaches(path: pathlib.Path) -> list[str]:
    """``from x import _y`` / ``import x._y`` of onnxcam modules, and ``obj._attr`` on anything but ``self``/``cls``
    (another object's private state) or a module imported under that name."""
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("onnxcam")):
            found += [f"line {node.lineno}: from {node.module} import {a.name}" for a in node.names if private(a.name)]
            if node.module and any(private(p) for p in node.module.split(".")):
                found.append(f"line {node.lineno}: from {node.module} import ...")
        elif isinstance(node, ast.Import):
            found += [f"line {node.lineno}: import {a.name}" for a in node.names
                      if a.name.startswith("onnxcam") and any(private(p) for p in a.name.split("."))]
        elif isinstance(node, ast.Attribute) and private(node.attr):
            owner = node.value
            if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
                continue
            found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def lazy_imports(path: pathlib.Path) -> list[str]:
    """Imports inside a function body whose top-level package is not in :data:`LAZY_ALLOWED`."""
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for func in ast.walk(tree):
        if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for node in ast.walk(func):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = ["." if node.level else (node.module or "")]
            else:
                continue
            found += [f"line {node.lineno}: {n}" for n in names if n.split(".")[0] not in LAZY_ALLOWED]
    return found


def test_no_module_reaches_into_another_modules_private_names():
    broken = {module_name(p): hits for p in sources() if (hits := private_reaches(p))}
    assert not broken, broken


def test_nothing_is_imported_inside_a_function_but_the_optional_engines():
    broken = {module_name(p): hits for p in sources() if (hits := lazy_imports(p))}
    assert not broken, broken


def test_the_checks_can_fail(tmp_path):
    """Both AST checks see what they look for (so the two tests above can fail)."""
    bad = tmp_path / "bad.py"
    bad.write_text("from onnxcam.core.errors import _hidden\n\ndef f(x):\n    import json\n    return x._state\n")
    assert len(private_reaches(bad)) == 2 and len(lazy_imports(bad)) == 1


@pytest.mark.skipif(shutil.which("lint-imports") is None and not (pathlib.Path(sys.executable).parent /
                                                                    "lint-imports").exists(),
                    reason="import-linter is not installed (pip install -e '.[dev]')")
def test_import_contracts_hold():
    """import-linter's contracts (pyproject.toml): layers, no training framework under the runtime, no cycles."""
    exe = shutil.which("lint-imports") or str(pathlib.Path(sys.executable).parent / "lint-imports")
    proc = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "3 kept, 0 broken" in proc.stdout
