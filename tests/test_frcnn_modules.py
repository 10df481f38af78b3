"""The Faster R-CNN package's shape: one concept per module, none above 600 lines, and no import
of the report (the caller draws: ``engine.train(on_epoch=...)``) or of the darknet backend."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import deeplesion_cli.frcnn

PACKAGE = Path(deeplesion_cli.frcnn.__file__).parent
MODULES = sorted(PACKAGE.glob("*.py"))


def _imported(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_frcnn_modules_import_neither_report_nor_darknet(path):
    bad = {n for n in _imported(path)
           if n.startswith(("deeplesion_cli.report", "deeplesion_cli.darknet"))}
    assert not bad, f"{path.name} imports {sorted(bad)}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_frcnn_modules_stay_below_600_lines(path):
    assert len(path.read_text().splitlines()) <= 600


def test_no_training_function_is_long():
    """The loop reads as a few named steps (torchvision references style), not one long body."""
    for name in ("engine.py", "epoch.py", "setup.py"):
        tree = ast.parse((PACKAGE / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef):
                length = node.end_lineno - node.lineno + 1
                assert length <= 80, f"{name}:{node.name} is {length} lines"
