"""Our cells beside the paper's (`ltkd tables --versus paper`).

A study's `paper:` block holds the published value of each cell it can (per table and row, in the
table's column order) and where it was read. Each such cell is shown as ours / the paper's / the
difference, and the difference is marked `!` when it is larger than two of our seed standard
deviations (a cell with fewer than two seeds has no spread and is never marked). The tidy CSV gains
the paper's value, the difference, the mark and the source.
"""
from __future__ import annotations

import math

import pandas as pd

from orchestrator.tables.core import Table

FAR = "!"  # |ours − paper| > FAR_STDS × our seed std
FAR_STDS = 2.0


def paper_cells(table: Table, study) -> dict[tuple[str, tuple[str, ...]], float]:
    """(shown row, column) -> the paper's value, for the cells the study's `paper:` block gives."""
    block = study.paper.get(table.name)
    if block is None:
        return {}
    by_name, rows = {}, table.spec.shown_rows(study.methods, study.student_baseline)
    methods = [method for _, method in rows]
    for label, method in rows:
        by_name[label] = table.spec.shown_label(label, method)
        if method is not None and methods.count(method) == 1:  # a method with one row: its name names it
            by_name.setdefault(method, by_name[label])
    out = {}
    for key, values in block.rows.items():
        row = key if key in table.rows else by_name.get(key)
        if row not in table.rows:
            continue
        for col, value in zip(table.cols, values):
            if value is not None:
                out[(row, col)] = float(value)
    return out


def _compare(table: Table, row: str, col: tuple[str, ...], paper: float) -> tuple[float, bool]:
    cell = table.cells[(row, col)]
    if cell.n == 0 or (cell.is_delta and cell.delta is None):
        return math.nan, False
    ours = cell.mean
    diff = ours - paper
    far = not math.isnan(cell.std) and abs(diff) > FAR_STDS * cell.std
    return diff, far


def versus_frame(table: Table, study) -> pd.DataFrame:
    """Wide text frame: each cell as 'ours / paper / difference', the paper's rows only."""
    values = paper_cells(table, study)
    rows = [r for r in table.rows if any((r, c) in values for c in table.cols)]
    data = []
    for r in rows:
        line = []
        for c in table.cols:
            ours = table.cells[(r, c)].text()
            if (r, c) not in values:
                line.append(ours)
                continue
            paper = values[(r, c)]
            diff, far = _compare(table, r, c, paper)
            shown_diff = "–" if math.isnan(diff) else f"{diff:+.2f}{FAR if far else ''}"
            line.append(f"{ours} / {paper:.2f} / {shown_diff}")
        data.append(line)
    return pd.DataFrame(data, index=pd.Index(rows), columns=pd.MultiIndex.from_tuples(table.cols))


def render_versus_md(table: Table, study) -> str:
    frame = versus_frame(table, study)
    flat = frame.copy()
    flat.columns = [" ".join(c) for c in frame.columns]
    source = study.paper[table.name].source
    return (f"{table.title}\n\nEach cell: ours / the paper's / ours − paper; {FAR} marks a difference larger than "
            f"{FAR_STDS:g} seed standard deviations. Paper: {source}.\n\n" + flat.to_markdown())


def versus_tidy(table: Table, study) -> pd.DataFrame:
    """The tidy frame with the paper's value, the difference, the mark and the source."""
    frame = table.frame()
    values = paper_cells(table, study)
    source = study.paper[table.name].source if table.name in study.paper else ""
    extra = {"paper": [], "paper_diff": [], "paper_far": [], "paper_source": []}
    for r in table.rows:
        for c in table.cols:
            paper = values.get((r, c))
            diff, far = (math.nan, False) if paper is None else _compare(table, r, c, paper)
            extra["paper"].append(math.nan if paper is None else paper)
            extra["paper_diff"].append(diff)
            extra["paper_far"].append(far)
            extra["paper_source"].append(source if paper is not None else "")
    for key, column in extra.items():
        frame[key] = column
    return frame
