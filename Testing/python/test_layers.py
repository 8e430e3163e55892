"""The layers of the design: the core never imports Slicer, Qt or VTK."""

from __future__ import annotations

import ast
from pathlib import Path

import brainbarriers

FORBIDDEN = {"slicer", "qt", "ctk", "vtk", "PythonQt", "mrml"}


def test_core_never_imports_slicer():
    offenders = []
    for path in Path(brainbarriers.__file__).parent.rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            offenders += [f"{path}:{node.lineno} {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    assert not offenders, offenders
