"""The report folder being written: its files, its figures, the lines of ``index.md`` and the
sections of ``report.tex``.

Every file is written atomically and remembered (:attr:`ReportWriter.files`); a figure that fails
to draw becomes a warning instead of stopping the report. Paths in ``index.md`` and
``report.tex`` are relative to the report folder, so the folder can be moved.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from deeplesion_cli import atomic
from deeplesion_cli.report import latex, tables
from deeplesion_cli.report.tables import Table

#: The files each table is written as: (what index.md calls it, extension).
TABLE_FORMATS = (("Markdown", "md"), ("LaTeX", "tex"), ("CSV", "csv"))


def safe_name(name: str) -> str:
    """``name`` as a file name: anything but letters, digits, ``-`` and ``_`` becomes ``_``."""
    text = "".join(c if c.isalnum() or c in "-_" else "_" for c in str(name))
    return text or "_"


def unique_names(names: Sequence[str]) -> list[str]:
    """``names`` with repeats made unique by ``_2``, ``_3``... (first one kept as is)."""
    seen: set[str] = set()
    out = []
    for name in names:
        candidate, k = name, 1
        while candidate in seen:
            k += 1
            candidate = f"{name}_{k}"
        seen.add(candidate)
        out.append(candidate)
    return out


class ReportWriter:
    """Writes into ``out_dir`` and collects what the index and the LaTeX document list.

    ``md``: the lines of index.md so far; ``tables``: (section, table) of every table written;
    ``tex_sections``: (title, table .tex files, [(figure file, caption)]) in reading order.
    With ``pdf``, every figure is also drawn as a PDF beside its PNG, and LaTeX uses the PDF.
    """

    def __init__(self, out_dir: Path, pdf: bool):
        self.out = out_dir
        self.pdf = pdf
        self.files: list[Path] = []
        self.warnings: list[str] = []
        self.md: list[str] = []
        self.tables: list[tuple[str, Table]] = []
        self.tex_sections: list[tuple[str, list[str], list[tuple[str, str]]]] = []

    # ----------------------------------------------------------------------------- files
    def rel(self, path: Path) -> str:
        return Path(os.path.relpath(path, self.out)).as_posix()

    def path(self, rel: str) -> Path:
        p = self.out / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def text(self, rel: str, content: str) -> Path:
        p = self.path(rel)
        atomic.write_text(p, content)
        self.files.append(p)
        return p

    def figure(self, rel: str, draw, *args, **kwargs) -> Path | None:
        """``draw(*args, path, pdf=...)``; a figure that fails becomes a warning."""
        p = self.path(rel)
        try:
            written = draw(*args, p, pdf=self.pdf, **kwargs)
        except Exception as exc:  # noqa: BLE001 - one bad figure must not sink the report
            self.warn(f"{rel}: figure not drawn: {type(exc).__name__}: {exc}")
            return None
        self.files += list(written)
        return p

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    # ----------------------------------------------------------------- index.md and LaTeX
    @staticmethod
    def table_links(t: Table) -> str:
        return " · ".join(f"[{kind}](tables/{t.name}.{ext})" for kind, ext in TABLE_FORMATS)

    def add_table(self, section: str, t: Table, heading: str | None = "###") -> None:
        """Write ``tables/<name>.md .tex .csv`` and show the table in index.md, under a
        ``heading`` of its title (None: the section's heading is the table's)."""
        self.text(f"tables/{t.name}.md", tables.table_markdown(t, heading="#"))
        self.text(f"tables/{t.name}.tex", latex.table_latex(t))
        self.text(f"tables/{t.name}.csv", tables.table_csv(t))
        self.tables.append((section, t))
        self.md.append(tables.table_markdown(t, heading=heading))
        self.md.append(f"Table files: {self.table_links(t)}\n")

    def image_md(self, p: Path | None, alt: str) -> str:
        """index.md's image link of figure ``p`` (and its PDF's); "" for a figure not drawn."""
        if p is None:
            return ""
        text = f"![{alt}]({self.rel(p)})"
        if self.pdf and p.with_suffix(".pdf").is_file():
            text += f" ([PDF]({self.rel(p.with_suffix('.pdf'))}))"
        return text

    def tex_fig(self, p: Path | None, caption: str, figs: list) -> None:
        """Add figure ``p`` (its PDF with ``pdf``) to a LaTeX section's ``figs``."""
        if p is not None:
            figs.append((self.rel(p.with_suffix(".pdf") if self.pdf else p), caption))
