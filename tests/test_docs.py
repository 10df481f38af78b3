"""The generated command pages (docs/commands/) match the commands' --help, and every command's
help has an example."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _builder():
    spec = importlib.util.spec_from_file_location("build_command_pages",
                                                  DOCS / "build_command_pages.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_command_pages_are_current():
    pages = _builder().pages()
    stale = [p.name for p, text in pages.items() if not p.is_file() or p.read_text() != text]
    assert stale == [], f"run `python docs/build_command_pages.py` (stale: {stale})"
    on_disk = {p.name for p in (DOCS / "commands").glob("*.md")}
    assert on_disk == {p.name for p in pages}


def test_every_command_has_an_example():
    builder = _builder()
    from deeplesion_cli.cli import main

    for path, _ in builder._commands(main):
        text = builder.help_text(path)
        assert re.search(r"Examples?:\n\s+(lesion|torchrun) ", text), " ".join(path)


def test_markdown_links_resolve():
    for page in DOCS.rglob("*.md"):
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target:
                continue
            assert (page.parent / target).exists(), f"{page}: broken link {target}"
