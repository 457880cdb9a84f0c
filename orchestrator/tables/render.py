"""Render a Table: Markdown, LaTeX and HTML (pandas Styler), and the tidy CSV (one line per cell).

Marks: best = **bold** / \\textbf / font-weight bold; second = <u>underline</u> / \\underline /
text-decoration underline. HTML is a whole UTF-8 document (`<meta charset="utf-8">`). LaTeX uses booktabs rules (\\toprule, \\midrule, \\bottomrule: needs
\\usepackage{booktabs}; ✓ needs amssymb) with a \\midrule before the method rows and before Δ.
"""
from __future__ import annotations

import html
import re

import pandas as pd

from orchestrator.tables.core import BEST, SECOND, Table, pair_display

FORMATS = ("md", "latex", "csv", "html")
EXTENSIONS = {"md": "md", "latex": "tex", "csv": "csv", "html": "html"}

_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
}
_LATEX_SYMBOLS = {
    "±": r"$\pm$", "γ": r"$\gamma$", "→": r"$\to$", "Δ": r"$\Delta$", "†": r"$^\dagger$", "–": "--",
    "×": r"$\times$", "✓": r"$\checkmark$", "−": r"$-$", "—": "---", "<": r"$<$", ">": r"$>$",
}


def latex_escape(text: str) -> str:
    out = []
    for ch in str(text):
        out.append(_LATEX_SPECIAL.get(ch) or _LATEX_SYMBOLS.get(ch) or ch)
    return "".join(out)


def _flat(col: tuple[str, ...]) -> str:
    return " ".join(col)


def render_md(table: Table) -> str:
    text, marks = table.text(), table.marks()
    wrap = {BEST: "**{}**", SECOND: "<u>{}</u>", "": "{}"}
    data = [[wrap[m].format(t) for t, m in zip(trow, mrow)] for trow, mrow in zip(text.values, marks.values)]
    flat = pd.DataFrame(data, index=text.index, columns=[_flat(c) for c in table.cols])
    return flat.to_markdown(stralign="center", disable_numparse=True)


def render_csv(table: Table) -> str:
    return table.frame().to_csv(index=False, float_format="%.6g", lineterminator="\n")


def _styles(table: Table, best: str, second: str, rule: str | None = None) -> pd.DataFrame:
    marks = table.marks()
    styles = marks.replace({BEST: best, SECOND: second})
    if rule:
        for row in table.rules_before:
            styles.loc[row] = [f"{s} {rule}".strip() for s in styles.loc[row]]
    return styles


def render_latex(table: Table) -> str:
    # For the paper: the models by their display names (ResNet32×4 → ResNet8×4, not resnet32x4→resnet8x4).
    text = table.text().map(latex_escape)
    text.index = [latex_escape(pair_display(r)) for r in table.rows]
    text.columns = pd.MultiIndex.from_tuples([tuple(latex_escape(pair_display(x)) for x in c) for c in table.cols])
    styles = _styles(table, "textbf: --rwrap;", "underline: --rwrap;")
    styles.index, styles.columns = text.index, text.columns
    styler = text.style.apply(lambda _: styles, axis=None)
    latex = styler.to_latex(
        hrules=True, multicol_align="c", column_format="l" + "c" * len(table.cols),
        caption=latex_escape(table.title), label=f"tab:{table.study}_{table.name}", position_float="centering",
    )
    # booktabs \midrule before the method rows and before Δ
    lines = latex.splitlines()
    starts = {latex_escape(pair_display(r)) + " & " for r in table.rules_before}
    out, in_body = [], False
    for line in lines:
        if line.strip() == r"\midrule":
            in_body = True
        elif in_body and any(line.startswith(s) for s in starts):
            out.append(r"\midrule")
        out.append(line)
    return "\n".join(out) + "\n"


def render_html(table: Table) -> str:
    styles = _styles(table, "font-weight: bold;", "text-decoration: underline;", "border-top: 1px solid black;")
    styler = (
        table.text().style.apply(lambda _: styles, axis=None)
        .format(escape="html").format_index(escape="html", axis=0).format_index(escape="html", axis=1)
        # The uuid names ids and CSS selectors: made of plain characters, so no study name can inject markup.
        .set_uuid(re.sub(r"[^A-Za-z0-9_-]", "_", f"{table.study}_{table.name}")).set_caption(html.escape(table.title))
    )
    # A whole document that declares UTF-8: MLflow's artifact viewer (and a browser opening the file)
    # would otherwise read ± and γ as Latin-1 ("Â±", "Î³").
    return styler.to_html(doctype_html=True, encoding="utf-8")


RENDERERS = {"md": render_md, "latex": render_latex, "csv": render_csv, "html": render_html}


def render(table: Table, fmt: str) -> str:
    if fmt not in RENDERERS:
        raise ValueError(f"unknown format {fmt!r}; allowed: {', '.join(FORMATS)}")
    return RENDERERS[fmt](table)
