"""LaTeX of ``lesion report``: each :class:`~deeplesion_cli.report.tables.Table` as a booktabs
``table`` environment, and ``report.tex``, a document that inputs every table and figure.

The table files need ``\\usepackage{booktabs}`` and ``\\usepackage{graphicx}`` (wide tables are
scaled to the text width); ``report.tex`` loads both and compiles with pdflatex from the report
folder.
"""

from __future__ import annotations

from deeplesion_cli.report.tables import Table, format_cell

_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
            "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
            "^": r"\textasciicircum{}", "–": "--", "<": r"\textless{}", ">": r"\textgreater{}",
            "`": ""}
#: Tables wider than this many columns are scaled to the text width.
WIDE = 8
#: A text column with a longer cell wraps (``p`` column).
LONG_TEXT = 40


def escape(text: str) -> str:
    """``text`` with LaTeX's special characters escaped (Markdown backticks dropped)."""
    return "".join(_SPECIAL.get(ch, ch) for ch in str(text))


def _align(table: Table, j: int) -> str:
    """``l`` for the first column and text columns, ``p{..}`` for long text, ``r`` for numbers."""
    values = [getattr(row[j], "value", row[j]) for row in table.rows]
    texts = [v for v in values if isinstance(v, str)]
    if j == 0 or texts:
        return r"p{0.3\textwidth}" if any(len(t) > LONG_TEXT for t in texts) else "l"
    return "r"


def table_latex(table: Table) -> str:
    """A ``table`` float: caption (title), label ``tab:<name>``, booktabs rules; the note as a
    footnote-size paragraph below. Text columns are left-aligned (a long one wraps), number
    columns right-aligned."""
    n = len(table.header)
    spec = "".join(_align(table, j) for j in range(n))
    lines = [r"\begin{tabular}{" + spec + "}", r"\toprule",
             " & ".join(escape(h) for h in table.header) + r" \\", r"\midrule"]
    for row in table.rows:
        lines.append(" & ".join(escape(format_cell(v, missing="–")) for v in row) + r" \\")
    lines.append(r"\bottomrule")
    lines.append(r"\end{tabular}")
    body = "\n".join(lines)
    if n > WIDE:
        body = r"\resizebox{\textwidth}{!}{%" + "\n" + body + "%\n}"
    out = [r"\begin{table}[htbp]", r"\centering", rf"\caption{{{escape(table.title)}}}",
           rf"\label{{tab:{escape(table.name)}}}", body]
    if table.note:
        out.append(r"\par\smallskip{\footnotesize " + escape(table.note) + "}")
    out.append(r"\end{table}")
    return "\n".join(out) + "\n"


def document(title: str, sections: list[tuple[str, list[str], list[tuple[str, str]]]]) -> str:
    """``report.tex``: ``sections`` = (heading, table .tex paths to ``\\input``, figures as
    (path, caption)), paths relative to the report folder."""
    out = [r"\documentclass[a4paper,10pt]{article}", r"\usepackage[margin=2cm]{geometry}",
           r"\usepackage{booktabs}", r"\usepackage{graphicx}", r"\usepackage{float}",
           r"\usepackage[T1]{fontenc}", r"\usepackage[utf8]{inputenc}",
           rf"\title{{{escape(title)}}}", r"\date{}", r"\begin{document}", r"\maketitle"]
    for heading, inputs, figures in sections:
        if not inputs and not figures:
            continue
        out.append(rf"\section{{{escape(heading)}}}")
        for path in inputs:
            out.append(rf"\input{{{path}}}")
        for path, caption in figures:
            out += [r"\begin{figure}[H]", r"\centering",
                    rf"\includegraphics[width=\linewidth,height=0.4\textheight,"
                    rf"keepaspectratio]{{{path}}}",
                    rf"\caption{{{escape(caption)}}}", r"\end{figure}"]
        out.append(r"\clearpage")
    out.append(r"\end{document}")
    return "\n".join(out) + "\n"
