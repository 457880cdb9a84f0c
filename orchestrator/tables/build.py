"""Build a study's tables from its planned trials and their FINISHED runs (config_hash -> run).

- main: rows Teacher, Student, every method row, then the Δ rows (`TableSpec.deltas`: the reference
  minus the best other row, or minus named rows); columns pair × γ × {Tail, All}.
- ablation: the chosen method rows (Teacher / Student only when named); columns pair × {Tail, All},
  with γ as a column level only when the study has several.
- ngroups: rows = pairs; columns = the n(G) values of each LTKD-family method's grid, one block per
  method (and per value of any other hyperparameter it varies); cells hold one metric (acc_tail).
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping

from orchestrator.study import StudySpec, TableSpec, Trial, full_params, method_rows, row_label, versus_text
from orchestrator.tables.core import (
    GROUP_COLUMNS, METRIC_NAMES, Cell, Table, dataset_display, delta_cell, gamma_label, mark_best, pair_label,
)
from orchestrator.tracking import RunRecord
from trainer.methods import METHODS


def study_pairs(study: StudySpec) -> list[tuple[str, str]]:
    return list(dict.fromkeys((p.teacher, p.student) for p in study.pairs))


def _pairs_of(trial: Trial, study: StudySpec) -> list[tuple[str, str]]:
    """The pairs whose column a trial's run fills (a teacher or a Student run serves several)."""
    cfg = trial.config
    if cfg.role == "teacher":
        return [p for p in study_pairs(study) if p[0] == cfg.model]
    if cfg.role == "student":
        return [p for p in study_pairs(study) if p[1] == cfg.model]
    return [(cfg.teacher, cfg.model)]


def planned_by_cell(study: StudySpec, trials: list[Trial]) -> dict[tuple[str, tuple[str, str], float], list[Trial]]:
    """(row label, pair, gamma) -> the trials (one per seed) of that cell."""
    planned: dict[tuple, list[Trial]] = defaultdict(list)
    for t in trials:
        for pair in _pairs_of(t, study):
            planned[(t.row, pair, t.config.gamma)].append(t)
    return planned


def _cell(row: str, col: tuple[str, ...], trials: list[Trial], finished: Mapping[str, RunRecord], key: str,
          info: dict, rankable: bool) -> Cell:
    values: dict[int, float] = {}
    run_ids: list[str] = []
    for t in sorted(trials, key=lambda t: t.config.seed):
        rec = finished.get(t.config_hash)
        if rec is not None and key in rec.metrics:
            values[t.config.seed] = float(rec.metrics[key])
            run_ids.append(rec.run_id)
    return Cell(row, col, values, len(trials), run_ids, {**info, "metric": key}, rankable=rankable)


def _seeds_text(study: StudySpec) -> str:
    k = len(study.seeds)
    return f"mean ± std over {k} seeds" if k > 1 else "one seed"


def build_tables(study: StudySpec, trials: list[Trial], finished: Mapping[str, RunRecord]) -> list[Table]:
    planned = planned_by_cell(study, trials)
    out = []
    for spec in study.tables:
        if spec.kind == "ngroups":
            out.append(_ngroups_table(study, spec, planned, finished))
        else:
            out.append(_group_table(study, spec, planned, finished))
    return out


def _group_table(study: StudySpec, spec: TableSpec, planned, finished: Mapping[str, RunRecord]) -> Table:
    rows = spec.shown_rows(study.methods, study.student_baseline)
    shown = {label: spec.shown_label(label, method) for label, method in rows}
    several_gammas = spec.kind == "main" or len(study.dataset.gammas) > 1
    cols, where = [], {}
    for pair in study_pairs(study):
        for gamma in study.dataset.gammas:
            for group, key in GROUP_COLUMNS:
                col = (pair_label(*pair), gamma_label(gamma), group) if several_gammas else (pair_label(*pair), group)
                cols.append(col)
                where[col] = (pair, gamma, group, key)
    cells: dict = {}
    for label, method in rows:
        for col in cols:
            pair, gamma, group, key = where[col]
            info = {"row": shown[label], "pair": pair_label(*pair), "gamma": gamma, "group": group, "n_groups": None}
            cells[(shown[label], col)] = _cell(shown[label], col, planned.get((label, pair, gamma), []), finished, key,
                                               info, rankable=method is not None)
    table_rows = [shown[label] for label, _ in rows]
    method_rows_shown = [shown[label] for label, method in rows if method is not None]
    for col in cols:
        mark_best([cells[(r, col)] for r in method_rows_shown])
    rules = []
    first_method = next((r for r in table_rows if r in method_rows_shown), None)
    if first_method and first_method != table_rows[0]:
        rules.append(first_method)
    deltas = spec.deltas(rows)
    explained = []
    for d in deltas:
        reference = shown[d.row]
        versus = [shown[v] for v in d.versus] if d.versus is not None else [r for r in method_rows_shown if r != reference]
        for col in cols:
            ref = cells[(reference, col)]
            cells[(d.label, col)] = delta_cell(ref, [cells[(v, col)] for v in versus], col, dict(ref.info), d.label)
        table_rows.append(d.label)
        explained.append(f"{d.label} = {reference} − " + ("best other row" if d.versus is None else versus_text(versus)))
    if deltas:
        rules.append(deltas[0].label)
    gammas = ", ".join(f"{g:g}" for g in study.dataset.gammas)
    # A caption a paper can take: no study or table name (the console names those), readable names.
    where_gamma = f" (γ = {gammas})" if not several_gammas else ""
    title = spec.title or (
        f"Top-1 accuracy (%) on {dataset_display(study.dataset.name)}{where_gamma}, {_seeds_text(study)}. "
        "Tail: the third of the classes with the fewest training images; All: all classes."
        + (f" {'; '.join(explained)}; † p < 0.05 (paired t-test over seeds)." if explained else "")
    )
    return Table(spec, study.name, title, table_rows, cols, cells, rules)


def _ngroups_table(study: StudySpec, spec: TableSpec, planned, finished: Mapping[str, RunRecord]) -> Table:
    chosen = {label for label, _ in spec.shown_rows(study.methods, study.student_baseline)}
    key = spec.cell_metric
    # block -> [(n(G), row label)], in the study's method order, n(G) ascending
    blocks: dict[str, list[tuple[int, str]]] = {}
    for label, method, point in method_rows(study):
        if label not in chosen:
            continue
        params = study.methods[method]
        varied = [k for k, v in params.items() if isinstance(v, list) and len(v) > 1 and k != "n_groups"]
        block = row_label(spec.labels.get(method) or (METHODS[method].display or method), point, varied)
        n_groups = int(full_params(study, method, point, None, None)["n_groups"])
        blocks.setdefault(block, []).append((n_groups, label))
    several_gammas = len(study.dataset.gammas) > 1
    cols, where = [], {}
    for block, points in blocks.items():
        for gamma in study.dataset.gammas:
            for n_groups, label in sorted(points):
                col = (block, gamma_label(gamma), f"n(G)={n_groups}") if several_gammas else (block, f"n(G)={n_groups}")
                cols.append(col)
                where[col] = (block, gamma, n_groups, label)
    rows = [pair_label(*p) for p in study_pairs(study)]
    cells: dict = {}
    for pair in study_pairs(study):
        row = pair_label(*pair)
        scopes: dict[tuple, list[Cell]] = defaultdict(list)
        for col in cols:
            block, gamma, n_groups, label = where[col]
            info = {"row": block, "pair": row, "gamma": gamma, "group": METRIC_NAMES[key], "n_groups": n_groups}
            cell = _cell(row, col, planned.get((label, pair, gamma), []), finished, key, info, rankable=True)
            cells[(row, col)] = cell
            scopes[(block, gamma)].append(cell)
        for scope in scopes.values():
            mark_best(scope)
    gammas = ", ".join(f"{g:g}" for g in study.dataset.gammas)
    scope = {"All": "Overall"}.get(METRIC_NAMES[key], f"{METRIC_NAMES[key]}-group")
    title = spec.title or (
        f"{scope} top-1 accuracy (%) on {dataset_display(study.dataset.name)} (γ = {gammas}) by the number of class "
        f"groups n(G), {_seeds_text(study)}."
    )
    return Table(spec, study.name, title, rows, cols, cells)
