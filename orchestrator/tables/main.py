"""The main result table: rows Teacher, Student and each method; columns pair x gamma x {Tail, All}.

Cells are found by trial identity (config_hash), not by parsing params: a cell holds exactly the
runs of the trials the study defines, so a changed recipe never mixes old runs into a new table.
Each cell is mean ± sample std (ddof = 1) over the seeds that have a FINISHED run; a cell with no
run shows MISSING, one with fewer seeds than planned shows how many it has.
"""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping

import pandas as pd

from orchestrator.study import StudySpec, Trial, method_rows
from orchestrator.tracking import RunRecord

MISSING = "–"
METRICS = (("Tail", "acc_tail"), ("All", "acc_all"))


def pair_label(teacher: str, student: str) -> str:
    return f"{teacher}→{student}"


def _columns_of(trial: Trial, study: StudySpec) -> list[str]:
    cfg = trial.config
    if cfg.role == "teacher":
        return [pair_label(p.teacher, p.student) for p in study.pairs if p.teacher == cfg.model]
    if cfg.role == "student":
        return [pair_label(p.teacher, p.student) for p in study.pairs if p.student == cfg.model]
    return [pair_label(cfg.teacher, cfg.model)]


def row_order(study: StudySpec) -> list[str]:
    rows = ["Teacher"] + (["Student"] if study.student_baseline else [])
    return rows + [label for label, _, _ in method_rows(study)]


def cell_frame(study: StudySpec, trials: list[Trial], finished: Mapping[str, RunRecord]) -> pd.DataFrame:
    """Tidy frame, one row per table cell: row, pair, gamma, group, mean, std, n, expected, run_ids."""
    planned: dict[tuple, list[Trial]] = defaultdict(list)
    for t in trials:
        for pair in _columns_of(t, study):
            planned[(t.row, pair, t.config.gamma)].append(t)
    records = []
    for row in row_order(study):
        for p in study.pairs:
            pair = pair_label(p.teacher, p.student)
            for gamma in study.dataset.gammas:
                cell_trials = planned.get((row, pair, gamma), [])
                runs = [finished[t.config_hash] for t in cell_trials if t.config_hash in finished]
                for group, key in METRICS:
                    values = [r.metrics[key] for r in runs if key in r.metrics]
                    n = len(values)
                    mean = sum(values) / n if n else math.nan
                    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else math.nan
                    records.append({
                        "row": row, "pair": pair, "gamma": gamma, "group": group, "mean": mean, "std": std,
                        "n": n, "expected": len(cell_trials), "run_ids": " ".join(r.run_id for r in runs),
                    })
    return pd.DataFrame.from_records(records)


def format_cell(mean: float, std: float, n: int, expected: int) -> str:
    if n == 0:
        return MISSING
    text = f"{mean:.2f}" if math.isnan(std) else f"{mean:.2f} ± {std:.2f}"
    if n < expected:
        text += f" (n={n})"
    return text


def main_table(cells: pd.DataFrame) -> pd.DataFrame:
    """Wide display frame: index = rows in study order, columns = (pair, γ, Tail/All)."""
    cells = cells.assign(
        text=[format_cell(m, s, n, e) for m, s, n, e in zip(cells["mean"], cells["std"], cells["n"], cells["expected"])],
        gamma_label=[f"γ={g:g}" for g in cells["gamma"]],
    )
    wide = cells.pivot_table(index="row", columns=["pair", "gamma_label", "group"], values="text", aggfunc="first", sort=False)
    wide = wide.reindex(index=list(dict.fromkeys(cells["row"])))
    col_order = list(dict.fromkeys(zip(cells["pair"], cells["gamma_label"], cells["group"])))
    wide = wide.reindex(columns=pd.MultiIndex.from_tuples(col_order, names=["pair", "gamma", "group"]))
    wide.index.name = None
    return wide


def missing_cells(cells: pd.DataFrame) -> list[str]:
    """Human-readable list of cells with fewer runs than planned."""
    short = cells[(cells["group"] == METRICS[0][0]) & (cells["n"] < cells["expected"])]
    return [f"{r.row} / {r.pair} / γ={r.gamma:g}: {r.n} of {r.expected} seeds" for r in short.itertuples()]


def render(wide: pd.DataFrame, fmt: str, cells: pd.DataFrame | None = None, caption: str | None = None) -> str:
    if fmt == "md":
        flat = wide.copy()
        flat.columns = [" ".join(c) for c in wide.columns]
        return flat.to_markdown(stralign="center")
    if fmt == "csv":
        assert cells is not None
        return cells.to_csv(index=False, float_format="%.4f")
    if fmt == "html":
        return wide.style.set_caption(caption or "").to_html()
    if fmt == "latex":
        latex_ready = wide.map(lambda s: s.replace("±", r"$\pm$"))
        styler = latex_ready.style
        if caption:
            styler = styler.set_caption(caption)
        return styler.to_latex(hrules=True, multicol_align="c", column_format="l" + "c" * wide.shape[1])
    raise ValueError(f"unknown format {fmt!r}; allowed: md, latex, csv, html")
