"""Figures beside the tables (matplotlib, Agg backend, PNG).

- ngroups tables: the n(G) curve, one panel per pair (and γ), one line per block (LTKD, LTKD-continuous).
- main tables: per-class accuracy against the class's training count for the teacher, the KD student and
  the reference (LTKD) student, from the runs' per_class_accuracy.json. Reading an artifact costs one
  download per run, so only the first seed's runs are read, for at most MAX_PANELS pairs × γ.
- main tables: the teacher's mean probability mass on the head / medium / tail groups over the balanced
  test set and over the long-tailed training set (metrics pg_test_* and pg_train_*), as bars; skipped
  with a note when the runs do not carry these metrics.

Each function returns the files it wrote and notes (why something was skipped).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

from orchestrator.study import StudySpec, Trial
from orchestrator.tables.build import planned_by_cell, study_pairs
from orchestrator.tables.core import Table, gamma_label, pair_label
from orchestrator.tracking import RunRecord

MAX_PANELS = 12
GROUPS = ("head", "medium", "tail")
PER_CLASS_ARTIFACT = "per_class_accuracy.json"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _grid(n: int, width: float = 4.0, height: float = 3.2):
    plt = _pyplot()
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[n:]:
        ax.set_visible(False)
    return plt, fig, flat[:n]


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def ngroups_plot(table: Table, out: Path) -> tuple[list[Path], list[str]]:
    """Metric against n(G) (log axis), mean ± std over seeds, per pair (and γ), one line per block."""
    panels: dict[tuple[str, float], dict[str, list[tuple[int, float, float]]]] = {}
    for (row, _col), cell in table.cells.items():
        info = cell.info
        if cell.n == 0:
            continue
        panel = panels.setdefault((row, info["gamma"]), {})
        panel.setdefault(info["row"], []).append((info["n_groups"], cell.mean, 0.0 if math.isnan(cell.std) else cell.std))
    if not panels:
        return [], [f"{table.name}: no finished runs to plot"]
    keys = sorted(panels, key=lambda k: (table.rows.index(k[0]), k[1]))
    several_gammas = len({k[1] for k in keys}) > 1
    plt, fig, axes = _grid(len(keys))
    metric = next(iter(table.cells.values())).info["metric"]
    for ax, key in zip(axes, keys):
        for block, points in panels[key].items():
            points.sort()
            xs, ys, es = zip(*points)
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=block)
        ax.set_xscale("log")
        ticks = sorted({x for pts in panels[key].values() for x, _, _ in pts})
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("number of groups n(G)")
        ax.set_ylabel(f"{metric} (%)")
        ax.set_title(key[0] + (f", {gamma_label(key[1])}" if several_gammas else ""))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return [_save(plt, fig, out / f"{table.study}_{table.name}_ngroups_curve.png")], []


def _first_seed_run(trials: list[Trial], finished: Mapping[str, RunRecord]) -> RunRecord | None:
    for t in sorted(trials, key=lambda t: t.config.seed):
        if t.config_hash in finished:
            return finished[t.config_hash]
    return None


def per_class_plot(table: Table, study: StudySpec, trials: list[Trial], finished: Mapping[str, RunRecord],
                   read_json, out: Path) -> tuple[list[Path], list[str]]:
    """Per-class accuracy vs training count: teacher, KD student, reference (LTKD) student; first seed."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    from orchestrator.study import method_rows

    planned = planned_by_cell(study, trials)
    labels = {m: lb for lb, m, _ in reversed(method_rows(study))}  # each method's first row
    deltas = table.spec.deltas(table.spec.shown_rows(study.methods, study.student_baseline))
    ref_method = table.spec.reference or "ltkd"
    ref_label = deltas[0].row if deltas else next((lb for lb, m, _ in method_rows(study) if ref_method in (lb, m)), None)
    series = [("Teacher", "Teacher"), ("KD student", labels.get("kd")), (f"{ref_label or 'LTKD'} student", ref_label)]
    series = [(name, row) for name, row in series if row]
    panels = [(pair, g) for pair in study_pairs(study) for g in study.dataset.gammas]
    notes = []
    if len(panels) > MAX_PANELS:
        notes.append(f"{table.name}: per-class plot shows the first {MAX_PANELS} of {len(panels)} pair × γ panels")
        panels = panels[:MAX_PANELS]
    cache: dict[str, dict | None] = {}
    data = []
    for pair, gamma in panels:
        lines = []
        for name, row in series:
            rec = _first_seed_run(planned.get((row, pair, gamma), []), finished)
            if rec is None:
                continue
            if rec.run_id not in cache:
                cache[rec.run_id] = read_json(rec.run_id, PER_CLASS_ARTIFACT)
            art = cache[rec.run_id]
            if art and art.get("per_class_accuracy") and art.get("class_counts"):
                lines.append((name, art["class_counts"], art["per_class_accuracy"]))
        if lines:
            data.append((pair, gamma, lines))
    if not data:
        return [], notes + [f"{table.name}: per-class plot skipped: no run has {PER_CLASS_ARTIFACT}"]
    plt, fig, axes = _grid(len(data), 4.4, 3.4)
    for ax, (pair, gamma, lines) in zip(axes, data):
        for name, counts, acc in lines:
            order = sorted(range(len(counts)), key=lambda i: -counts[i])
            xs = [counts[i] for i in order]
            ys = [acc[i] for i in order]
            k = max(1, len(xs) // 10)  # running mean over a tenth of the classes, in count order
            smooth = [sum(ys[max(0, i - k // 2): i + k // 2 + 1]) / len(ys[max(0, i - k // 2): i + k // 2 + 1]) for i in range(len(ys))]
            line, = ax.plot(xs, smooth, label=name)
            ax.scatter(xs, ys, s=6, alpha=0.35, color=line.get_color())
        ax.set_xscale("log")
        # Plain numbers on the major ticks and no labelled minor ticks: they collide on short ranges.
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("training images of the class")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{pair_label(*pair)}, {gamma_label(gamma)}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("per-class accuracy vs class size (first seed; line: running mean)", fontsize=10)
    return [_save(plt, fig, out / f"{table.study}_{table.name}_per_class.png")], notes


def teacher_group_prob_plot(table: Table, study: StudySpec, trials: list[Trial], finished: Mapping[str, RunRecord],
                            out: Path) -> tuple[list[Path], list[str]]:
    """Bars: the teacher's mean probability on head / medium / tail, balanced test vs long-tailed train."""
    keys = [f"pg_{split}_{g}" for split in ("test", "train") for g in GROUPS]
    panels = []
    for teacher in dict.fromkeys(p.teacher for p in study.pairs):
        for gamma in study.dataset.gammas:
            recs = [finished[t.config_hash] for t in trials
                    if t.role == "teacher" and t.config.model == teacher and t.config.gamma == gamma and t.config_hash in finished]
            recs = [r for r in recs if all(k in r.metrics for k in keys)]
            if recs:
                means = {k: sum(r.metrics[k] for r in recs) / len(recs) for k in keys}
                panels.append((teacher, gamma, len(recs), means))
    if not panels:
        return [], [f"{table.name}: teacher group-probability plot skipped: no teacher run carries the "
                    "pg_test_* / pg_train_* metrics (runs from before they were logged)"]
    notes = []
    if len(panels) > MAX_PANELS:
        notes.append(f"{table.name}: teacher group-probability plot shows the first {MAX_PANELS} of {len(panels)} panels")
        panels = panels[:MAX_PANELS]
    plt, fig, axes = _grid(len(panels), 4.0, 3.0)
    width = 0.38
    for ax, (teacher, gamma, n, means) in zip(axes, panels):
        xs = range(len(GROUPS))
        test = [means[f"pg_test_{g}"] for g in GROUPS]
        train = [means[f"pg_train_{g}"] for g in GROUPS]
        ax.bar([x - width / 2 for x in xs], test, width, label="balanced (test)")
        ax.bar([x + width / 2 for x in xs], train, width, label="long-tailed (train)")
        ax.set_xticks(list(xs), [g.capitalize() for g in GROUPS])
        ax.set_ylabel("mean group probability (%)")
        ax.set_title(f"teacher {teacher}, {gamma_label(gamma)} ({n} seed{'s' if n > 1 else ''})")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7)
    return [_save(plt, fig, out / f"{table.study}_{table.name}_teacher_group_prob.png")], notes


def write_plots(tables: list[Table], study: StudySpec, trials: list[Trial], finished: Mapping[str, RunRecord],
                read_json, out: Path) -> tuple[list[Path], list[str]]:
    files: list[Path] = []
    notes: list[str] = []
    for table in tables:
        parts = []
        if table.spec.kind == "ngroups":
            parts.append(ngroups_plot(table, out))
        elif table.spec.kind == "main":
            parts.append(per_class_plot(table, study, trials, finished, read_json, out))
            parts.append(teacher_group_prob_plot(table, study, trials, finished, out))
        for f, n in parts:
            files += f
            notes += n
    return files, notes
