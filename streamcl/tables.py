"""One table, three renderings: Markdown, LaTeX (booktabs) and CSV.

The report builds :class:`Table` s of display strings once and writes them in the format the
user asks for (``streamcl report --format md|latex|csv``), so the three outputs cannot disagree.
Written by hand: the few lines below are simpler than pandas' ``to_latex`` (which needs jinja2
and escapes ``±`` differently per version) and keep the report free of a templating dependency.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from typing import List, Sequence

FORMATS = ("md", "latex", "csv")

_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}

_LATEX_MATH = {"±": r"$\pm$", "≥": r"$\geq$", "≤": r"$\leq$", "−": "-", "Ω": r"$\Omega$"}


@dataclass
class Table:
    """A titled table of display strings; ``align`` is ``l``/``r`` per column, ``notes`` go under it."""

    title: str
    header: Sequence[str]
    rows: List[Sequence[str]] = field(default_factory=list)
    align: str = ""
    notes: List[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.align = self.align or "l" + "r" * (len(self.header) - 1)
        if len(self.align) != len(self.header):
            raise ValueError(f"align {self.align!r} does not match {len(self.header)} columns")


def to_markdown(t: Table, heading: str = "##") -> str:
    """A GitHub-flavoured Markdown table under a heading, notes as a list below it."""
    sep = ["---:" if a == "r" else "---" for a in t.align]
    lines = [f"{heading} {t.title}", "", "| " + " | ".join(t.header) + " |", "|" + "|".join(sep) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in t.rows]
    if t.notes:
        lines += [""] + [f"- {n}" for n in t.notes]
    return "\n".join(lines) + "\n"


def latex_escape(text: str) -> str:
    """Text safe inside a LaTeX table cell (``±``, ``≥``, ``≤``, ``Ω`` as math: pdfLaTeX has no Unicode for them)."""
    out = "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))
    for ch, tex in _LATEX_MATH.items():
        out = out.replace(ch, tex)
    return out


def to_latex(t: Table) -> str:
    """A booktabs ``table`` environment (``\\usepackage{booktabs}``), the title as caption, notes as a footnote."""
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{latex_escape(t.title)}}}",
             rf"\begin{{tabular}}{{{t.align}}}", r"\toprule",
             " & ".join(latex_escape(h) for h in t.header) + r" \\", r"\midrule"]
    lines += [" & ".join(latex_escape(c) for c in row) + r" \\" for row in t.rows]
    lines += [r"\bottomrule", r"\end{tabular}"]
    if t.notes:
        lines.append(r"\par\smallskip\footnotesize " + r" \\ ".join(latex_escape(n) for n in t.notes))
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def to_csv(t: Table) -> str:
    """The table as one CSV file: its header, then its rows (title and notes are left out)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(list(t.header))
    for row in t.rows:
        w.writerow(list(row))
    return buf.getvalue()


def render(tables: Sequence[Table], fmt: str) -> str:
    """All tables in one document: ``md`` or ``latex`` (CSV is one file per table: :func:`to_csv`)."""
    if fmt == "md":
        return "\n".join(to_markdown(t) for t in tables)
    if fmt == "latex":
        return "% streamcl report: \\usepackage{booktabs}\n" + "\n".join(to_latex(t) for t in tables)
    raise ValueError(f"format {fmt!r}: render writes md or latex; CSV is written one file per table")


__all__ = ["FORMATS", "Table", "latex_escape", "render", "to_csv", "to_latex", "to_markdown"]
