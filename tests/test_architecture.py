"""The layout holds (docs/architecture.md): module sizes, who may import whom, and one error
hierarchy. Read from the source, so a new module is checked the day it is added."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

import deeplesion_cli
from deeplesion_cli.errors import LesionError, LesionInputError, LesionRunError

PACKAGE = Path(deeplesion_cli.__file__).parent
MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)
MAX_LINES = 600

#: part -> parts it must never import (docs/architecture.md)
FORBIDDEN = {
    "errors": {"*"},
    "prepared": {"spec", "formats", "evaluation", "report", "frcnn", "darknet", "steps", "cli",
                 "matrix", "demo"},
    "spec": {"formats", "evaluation", "report", "frcnn", "darknet", "steps", "cli", "matrix",
             "demo"},
    "formats": {"evaluation", "report", "frcnn", "darknet", "steps", "cli", "matrix", "demo"},
    "evaluation": {"report", "frcnn", "darknet", "steps", "cli", "matrix", "demo"},
    "report": {"frcnn", "darknet", "steps", "cli", "matrix", "demo"},
    "frcnn": {"darknet", "report", "steps", "cli", "matrix", "demo"},
    "darknet": {"frcnn", "report", "steps", "cli", "matrix", "demo"},
    "runs": {"steps", "cli", "matrix", "demo", "report"},
    "steps": {"cli", "matrix", "demo"},
    "curves": {"cli", "matrix", "demo"},
    "matrix": {"cli", "demo"},
}


def _part(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py")


def _imported_parts(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    parts = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: inside its own part
                continue
            names = [node.module or ""]
            if node.module == "deeplesion_cli":
                names = [f"deeplesion_cli.{a.name}" for a in node.names]
        for name in names:
            if name.startswith("deeplesion_cli."):
                parts.add(name.split(".")[1])
    return parts


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_above_600_lines(path):
    assert len(path.read_text().splitlines()) <= MAX_LINES


def test_parts_import_only_what_the_layout_allows():
    wrong = []
    for path in MODULES:
        part = _part(path)
        forbidden = FORBIDDEN.get(part, set())
        for other in _imported_parts(path) - {part}:
            if "*" in forbidden and other not in ("errors",) or other in forbidden:
                wrong.append(f"{path.relative_to(PACKAGE)} imports {other}")
    assert not wrong, "\n".join(wrong)


def test_every_error_class_is_an_input_error_or_a_failed_run():
    loose = []
    for info in pkgutil.walk_packages(deeplesion_cli.__path__, "deeplesion_cli."):
        if info.name in ("deeplesion_cli.__main__",):
            continue
        module = importlib.import_module(info.name)
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if (cls.__module__ == info.name and issubclass(cls, BaseException)
                    and not issubclass(cls, LesionError)):
                if cls.__module__.startswith("deeplesion_cli.cli"):
                    continue  # click's own exception types, the handler's output
                loose.append(f"{info.name}.{name}")
    assert not loose, loose
    assert LesionInputError.exit_code == 2 and LesionRunError.exit_code == 1
