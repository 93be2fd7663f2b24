"""The VJP registry (onnxcam/autodiff/registry.py) and the layout of the rule modules: the registry imports no rule
module, each rule module imports only the registry, every module in the rules folder is loaded and registers
rules, and the ops without a gradient are ordinary rows of the table."""

from __future__ import annotations

import ast
import pathlib
import shutil
import subprocess
import sys

import onnx
import pytest

from onnxcam.autodiff import registry, rules
from onnxcam.autodiff.rules import RULES, VJP, carries_gradient, rule
from onnxcam.core.graph_builder import GraphBuilder

RULES_DIR = pathlib.Path(rules.__file__).parent
RULE_MODULES = sorted(p.stem for p in RULES_DIR.glob("*.py") if p.stem != "__init__")

#: The ops gradients.py used to list as NON_DIFFERENTIABLE.
NO_GRADIENT = {
    "Shape", "Size", "ArgMax", "ArgMin", "Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "Not",
    "And", "Or", "Xor", "NonZero", "ConstantOfShape", "Range", "IsNaN", "IsInf", "Constant", "EyeLike",
}


def _run(code: str, cwd: pathlib.Path | None = None, path: pathlib.Path | None = None) -> str:
    prefix = f"import sys; sys.path.insert(0, {str(path)!r}); " if path else ""
    done = subprocess.run([sys.executable, "-c", prefix + code], capture_output=True, text=True, cwd=cwd, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_registry_imports_no_rule_module():
    loaded = _run("import sys, onnxcam.autodiff.registry as r; "
                  "print(sorted(m for m in sys.modules if m.startswith('onnxcam.autodiff.rules')), len(r.RULES))")
    assert loaded == "[] 0"


def _imports(path: pathlib.Path) -> list[tuple[str, list[str]]]:
    """(module, imported names) for every import statement of ``path`` (names empty for ``import x``)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            out.append(("." * node.level + (node.module or ""), [alias.name for alias in node.names]))
    return out


@pytest.mark.parametrize("name", ["registry", *RULE_MODULES])
def test_rule_modules_import_only_the_registry(name):
    """A rule module imports onnxcam.autodiff.registry and onnxcam.core.* only (never another rule module, never a
    private name); the registry imports onnxcam.core.* only."""
    path = RULES_DIR.parent / "registry.py" if name == "registry" else RULES_DIR / f"{name}.py"
    allowed = ("onnxcam.core.",) if name == "registry" else ("onnxcam.core.", "onnxcam.autodiff.registry")
    for module, names in _imports(path):
        assert not module.startswith("."), f"{name}: relative import {module}"
        if module.split(".")[0] == "onnxcam":
            assert module.startswith(allowed), f"{name} imports {module}"
        assert not [n for n in names if n.startswith("_") and n != "__future__"], f"{name}: {module} {names}"


def test_every_rule_module_is_loaded_and_registers_rules():
    """``rules/__init__`` loads every module of the folder (nothing to list by hand), and each holds rules."""
    assert sorted(m.__name__.rsplit(".", 1)[1] for m in rules.MODULES) == RULE_MODULES
    owners = {fn.__module__ for fn in RULES.values()}
    assert owners == {f"onnxcam.autodiff.rules.{m}" for m in RULE_MODULES}


def test_a_module_added_to_the_folder_is_picked_up(tmp_path):
    """A copy of the rules package with one more module: importing the package registers its rule too."""
    package = tmp_path / "more_rules"
    shutil.copytree(RULES_DIR, package, ignore=shutil.ignore_patterns("__pycache__"))
    (package / "extra.py").write_text(
        "from onnxcam.autodiff.registry import VJP, Grads, rule\n\n\n"
        "@rule('MyOp')\ndef my_op(v: VJP) -> Grads:\n    return [v.g]\n")
    out = _run("import more_rules; from onnxcam.autodiff.registry import RULES; "
               "print(RULES['MyOp'].__module__, RULES['Relu'].__module__)", path=tmp_path)
    assert out == "more_rules.extra more_rules.activations"


def _vjp(op: str, inputs: list[str]) -> VJP:
    node = onnx.helper.make_node(op, inputs, ["y"], name="n")
    return VJP(node, ["g"], [True] * len(inputs), GraphBuilder(), None, 17)


@pytest.mark.parametrize("op", sorted(NO_GRADIENT))
def test_no_gradient_ops_are_rows(op):
    assert op in RULES and not carries_gradient(op)
    v = _vjp(op, ["a", "b"])
    assert RULES[op](v) == [None, None] and v.b.nodes == []


@pytest.mark.parametrize("op", ["Relu", "Conv", "Sign", "Floor", "Ceil", "Round", "NoSuchOp"])
def test_other_ops_carry_gradient(op):
    """Zero-derivative ops (Sign, Floor, …) carry dependency; so does an op with no rule (the pass reports it)."""
    assert carries_gradient(op)


def test_a_replaced_row_carries_gradient(monkeypatch):
    """The flag belongs to the registered function: a row replaced by an ordinary rule carries gradient."""
    monkeypatch.setitem(RULES, "Shape", lambda v: [v.g])
    assert carries_gradient("Shape")


def test_an_op_claimed_twice_is_an_error():
    before = dict(RULES)
    with pytest.raises(ValueError, match="op Relu already has a rule"):

        @rule("MyOtherOp", "Relu")
        def other(v: VJP) -> list[str | None]:
            return [v.g]

    assert before == RULES and "MyOtherOp" not in RULES
    assert registry.RULES is RULES
