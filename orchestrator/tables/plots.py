"""Figures beside the tables, in the one paper style of `style.py` (vector PDF and PNG, one column wide,
shared axes, error bars with caps, one legend above the panels).

- ngroups tables: the n(G) curve, one panel per pair (and γ), one line per block (LTKD, LTKD-continuous),
  mean ± std over seeds.
- main tables: per-class accuracy against the class's training count for the Teacher, the Student, KD
  and the reference (LTKD), from the runs' per_class_accuracy.json: every seed's run is read (one
  download each); each point is a class (with many classes, a tenth of them), mean ± std over seeds,
  for at most MAX_PANELS pairs × γ.
- main tables: the teacher's mean probability mass on the head / medium / tail groups over the balanced
  test set and over the long-tailed training set (metrics pg_test_* and pg_train_*), as bars with ± one
  std over seeds; skipped with a note when the runs do not carry these metrics.
- one run: `run_per_class_png`, the per-class accuracy of a single run (logged by the sweep per
  distillation run); `run_group_curves_png`, its accuracy on all / head / medium / tail per epoch on
  one chart (logged per trial run: the UI's run page draws each metric on a chart of its own).

Each `*_figure` function builds the figure from records (what the tests look at); each `*_plot`
function saves it and returns the files it wrote and notes (why something was skipped).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

from orchestrator.study import StudySpec, Trial, method_rows
from orchestrator.tables.build import planned_by_cell, study_pairs
from orchestrator.tables.core import METRIC_NAMES, Table, model_display, pair_display, pair_label
from orchestrator.tables.style import COLORS, DPI, MARKERS, figure_legend, label_outer, panel_figure, panel_title, paper_style, save
from orchestrator.tracking import RunRecord
from orchestrator.words import count

MAX_PANELS = 12
GROUPS = ("head", "medium", "tail")
PER_CLASS_ARTIFACT = "per_class_accuracy.json"
# With more classes than this, a per-class point each would be a cloud: points are then the means of
# a tenth of the classes each (in order of size), so every point still carries a seed error bar.
CLASSES_PER_POINT_ABOVE = 30
POINTS_WHEN_BINNED = 10

# What each figure shows, for the report beside it (a paper writes its own caption).
CAPTIONS = {
    "per_class": "Per-class test accuracy against the class's number of training images (log scale): each point is a "
                 f"class (with more than {CLASSES_PER_POINT_ABOVE} classes, the mean of a tenth of the classes in order "
                 "of size), mean ± std over seeds.",
    "teacher_group_prob": "The teacher's mean probability mass on the head, medium and tail groups of classes, over the "
                          "balanced test set and over the long-tailed training set, mean ± std over seeds.",
    "ngroups_curve": "Accuracy against the number of class groups n(G) (log scale), mean ± std over seeds.",
}


def caption_of(path: Path) -> str:
    """The caption of a figure file these functions wrote (empty for any other file)."""
    return next((text for kind, text in CAPTIONS.items() if path.stem.endswith("_" + kind)), "")


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample std (0 for one value), as the tables compute them."""
    n = len(values)
    mean = sum(values) / n
    return mean, (math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0)


def _gamma_title(gamma: float) -> str:
    return f"γ = {gamma:g}"


def log_ticks(low: float, high: float, most: int = 6) -> list[float]:
    """Round tick values for a log axis over [low, high]: the densest of 1-2-5, 1-3 and 1 per decade
    that gives at most `most` ticks (a decade-only axis leaves a γ=10 range with one label)."""
    if low <= 0 or high < low:
        raise ValueError(f"log axis range [{low}, {high}]: needs 0 < low <= high")
    if low == high:
        return [low]
    for steps in ((1, 2, 5), (1, 3), (1,)):
        ticks = [m * 10.0 ** e for e in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
                 for m in steps if low <= m * 10.0 ** e <= high]
        if len(ticks) <= most:
            return ticks if len(ticks) >= 2 else [low, high]
    return ticks


def _set_log_x(axes: list, values: list[float], ticks: list[float] | None = None) -> None:
    """One log x axis for the (shared) panels: round ticks with plain labels, no minor labels."""
    from matplotlib.ticker import NullLocator

    low, high = min(values), max(values)
    ticks = ticks or log_ticks(low, high)
    ax = axes[0]
    ax.set_xscale("log")
    ax.set_xlim(low / 1.3, high * 1.3)
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.xaxis.set_minor_locator(NullLocator())


def _short_seeds(counts: dict[str, int], planned: int) -> str:
    """' (KD: 2 of 3 seeds)' for the series of a panel with fewer seeds than the study plans."""
    short = [f"{name}: {n} of {count(planned, 'seed')}" for name, n in counts.items() if n < planned]
    return f"\n({'; '.join(short)})" if short else ""


def ngroups_plot(table: Table, out: Path) -> tuple[list[Path], list[str]]:
    """Metric against n(G) (log axis), mean ± std over seeds, per pair (and γ), one line per block."""
    fig, notes = ngroups_figure(table)
    if fig is None:
        return [], notes
    return save(fig, out / f"{table.study}_{table.name}_ngroups_curve.png"), notes


def ngroups_figure(table: Table):
    """(the figure, notes) of an ngroups table; (None, notes) when no cell has a run."""
    panels: dict[tuple[str, float], dict[str, list[tuple[int, float, float]]]] = {}
    for (row, _col), cell in table.cells.items():
        info = cell.info
        if cell.n == 0:
            continue
        panel = panels.setdefault((row, info["gamma"]), {})
        panel.setdefault(info["row"], []).append((info["n_groups"], cell.mean, 0.0 if math.isnan(cell.std) else cell.std))
    if not panels:
        return None, [f"{table.name}: no finished runs to plot"]
    keys = sorted(panels, key=lambda k: (table.rows.index(k[0]), k[1]))
    several_gammas = len({k[1] for k in keys}) > 1
    blocks = list(dict.fromkeys(block for key in keys for block in panels[key]))
    metric = next(iter(table.cells.values())).info["metric"]
    with paper_style():
        fig, axes = panel_figure(len(keys), 1.7)
        handles = {}
        for ax, key in zip(axes, keys):
            for block, points in panels[key].items():
                points.sort()
                xs, ys, es = zip(*points)
                i = blocks.index(block)
                bars = ax.errorbar(xs, ys, yerr=es, color=COLORS[i % len(COLORS)], marker=MARKERS[i % len(MARKERS)], label=block)
                handles.setdefault(block, bars)
            panel_title(ax, pair_display(key[0]) + (f", {_gamma_title(key[1])}" if several_gammas else ""))
        n_values = sorted({x for key in keys for pts in panels[key].values() for x, _, _ in pts})
        _set_log_x(axes, n_values, n_values)
        scope = {"All": "overall"}.get(METRIC_NAMES[metric], f"{METRIC_NAMES[metric].lower()}-group")
        label_outer(axes, "number of class groups n(G)", f"{scope} accuracy (%)")
        figure_legend(fig, list(handles.values()), list(handles))
    return fig, []


def _seed_runs(trials: list[Trial], finished: Mapping[str, RunRecord]) -> list[RunRecord]:
    return [finished[t.config_hash] for t in sorted(trials, key=lambda t: t.config.seed) if t.config_hash in finished]


def _points(counts: list[int], seeds: list[list[float]]) -> tuple[list[float], list[float], list[float]]:
    """(x, mean, std over seeds) per point, largest classes first: a point per class, or with many
    classes one per tenth of them (x = the median class size of the tenth, y = its mean accuracy)."""
    order = sorted(range(len(counts)), key=lambda i: (-counts[i], i))
    c = len(order)
    if c > CLASSES_PER_POINT_ABOVE:
        cuts = [math.floor(c * k / POINTS_WHEN_BINNED + 0.5) for k in range(POINTS_WHEN_BINNED + 1)]
        bins = [order[a:b] for a, b in zip(cuts, cuts[1:]) if b > a]
    else:
        bins = [[i] for i in order]
    xs, ms, es = [], [], []
    for members in bins:
        sizes = sorted(counts[i] for i in members)
        xs.append(float(sizes[len(sizes) // 2]))
        mean, std = _mean_std([sum(acc[i] for i in members) / len(members) for acc in seeds])
        ms.append(mean)
        es.append(std)
    return xs, ms, es


def per_class_plot(table: Table, study: StudySpec, trials: list[Trial], finished: Mapping[str, RunRecord],
                   read_json, out: Path) -> tuple[list[Path], list[str]]:
    """Per-class accuracy vs training count: Teacher, Student, KD, the reference (LTKD); mean ± std over seeds."""
    fig, notes = per_class_figure(table, study, trials, finished, read_json)
    if fig is None:
        return [], notes
    return save(fig, out / f"{table.study}_{table.name}_per_class.png"), notes


def per_class_figure(table: Table, study: StudySpec, trials: list[Trial], finished: Mapping[str, RunRecord], read_json):
    """(the figure, notes): one panel per pair × γ; (None, notes) when no run has the per-class artifact."""
    planned = planned_by_cell(study, trials)
    labels = {m: lb for lb, m, _ in reversed(method_rows(study))}  # each method's first row
    deltas = table.spec.deltas(table.spec.shown_rows(study.methods, study.student_baseline))
    ref_method = table.spec.reference or "ltkd"
    ref_label = deltas[0].row if deltas else next((lb for lb, m, _ in method_rows(study) if ref_method in (lb, m)), None)
    rows = [r for r in ("Teacher", "Student" if study.student_baseline else None, labels.get("kd"), ref_label) if r]
    rows = list(dict.fromkeys(rows))
    panels = [(pair, g) for pair in study_pairs(study) for g in study.dataset.gammas]
    notes = []
    if len(panels) > MAX_PANELS:
        notes.append(f"{table.name}: the per-class plot shows the first {MAX_PANELS} of {len(panels)} pair × γ panels")
        panels = panels[:MAX_PANELS]
    cache: dict[str, dict | None] = {}
    data = []
    for pair, gamma in panels:
        lines = []
        for row in rows:
            counts, seeds = None, []
            for rec in _seed_runs(planned.get((row, pair, gamma), []), finished):
                if rec.run_id not in cache:
                    cache[rec.run_id] = read_json(rec.run_id, PER_CLASS_ARTIFACT)
                art = cache[rec.run_id]
                if art and art.get("per_class_accuracy") and art.get("class_counts"):
                    counts = counts or art["class_counts"]
                    if len(art["per_class_accuracy"]) == len(counts):
                        seeds.append(art["per_class_accuracy"])
            if seeds:
                lines.append((row, len(seeds), *_points(counts, seeds)))
        if lines:
            data.append((pair, gamma, lines))
    if not data:
        return None, notes + [f"{table.name}: per-class plot skipped: no run has {PER_CLASS_ARTIFACT}"]
    several_pairs = len({pair for pair, _, _ in data}) > 1
    with paper_style():
        fig, axes = panel_figure(len(data), 1.75)
        handles = {}
        for ax, (pair, gamma, lines) in zip(axes, data):
            for k, (row, n_seeds, xs, ys, es) in enumerate(lines):
                i = rows.index(row)
                # Nudged apart on the log axis (a few per cent) so that equal points and their error bars stay visible.
                nudge = 10 ** (0.015 * (i - (len(rows) - 1) / 2))
                bars = ax.errorbar([x * nudge for x in xs], ys, yerr=es, color=COLORS[i % len(COLORS)],
                                   marker=MARKERS[i % len(MARKERS)], label=row)
                handles.setdefault(row, bars)
            title = (pair_display(pair_label(*pair)) + "\n" if several_pairs else "") + _gamma_title(gamma)
            panel_title(ax, title + _short_seeds({row: n for row, n, *_ in lines}, len(study.seeds)))
        _set_log_x(axes, [x for _, _, lines in data for line in lines for x in line[2]])
        axes[0].set_ylim(-3, 103)
        axes[0].set_yticks([0, 25, 50, 75, 100])
        label_outer(axes, "training images of the class", "test accuracy (%)")
        figure_legend(fig, list(handles.values()), list(handles))
    return fig, notes


def teacher_group_prob_plot(table: Table, study: StudySpec, trials: list[Trial], finished: Mapping[str, RunRecord],
                            out: Path) -> tuple[list[Path], list[str]]:
    """Bars: the teacher's mean probability on head / medium / tail, balanced test vs long-tailed train."""
    fig, notes = teacher_group_prob_figure(table, study, trials, finished)
    if fig is None:
        return [], notes
    return save(fig, out / f"{table.study}_{table.name}_teacher_group_prob.png"), notes


def teacher_group_prob_figure(table: Table, study: StudySpec, trials: list[Trial], finished: Mapping[str, RunRecord]):
    """(the figure, notes): one panel per teacher × γ; (None, notes) when no teacher run has the pg_* metrics."""
    keys = [f"pg_{split}_{g}" for split in ("test", "train") for g in GROUPS]
    panels = []
    for teacher in dict.fromkeys(p.teacher for p in study.pairs):
        for gamma in study.dataset.gammas:
            recs = [finished[t.config_hash] for t in trials
                    if t.role == "teacher" and t.config.model == teacher and t.config.gamma == gamma and t.config_hash in finished]
            recs = [r for r in recs if all(k in r.metrics for k in keys)]
            if recs:
                stats = {k: _mean_std([r.metrics[k] for r in recs]) for k in keys}
                panels.append((teacher, gamma, len(recs), stats))
    if not panels:
        return None, [f"{table.name}: teacher group-probability plot skipped: no teacher run carries the "
                      "pg_test_* / pg_train_* metrics (runs from before they were logged)"]
    notes = []
    if len(panels) > MAX_PANELS:
        notes.append(f"{table.name}: the teacher group-probability plot shows the first {MAX_PANELS} of {len(panels)} panels")
        panels = panels[:MAX_PANELS]
    several_teachers = len({teacher for teacher, *_ in panels}) > 1
    splits = (("test", "balanced test set", COLORS[2], ""), ("train", "long-tailed training set", COLORS[1], "/////"))
    width = 0.38
    top = max(m + e for *_, stats in panels for m, e in stats.values())
    with paper_style():
        fig, axes = panel_figure(len(panels), 1.6)
        handles = {}
        for ax, (teacher, gamma, n, stats) in zip(axes, panels):
            xs = range(len(GROUPS))
            for j, (split, label, color, hatch) in enumerate(splits):
                offset = (j - 0.5) * width
                bars = ax.bar([x + offset for x in xs], [stats[f"pg_{split}_{g}"][0] for g in GROUPS], width,
                              yerr=[stats[f"pg_{split}_{g}"][1] for g in GROUPS], color=color, hatch=hatch,
                              edgecolor="white", linewidth=0.3, label=label)
                handles.setdefault(label, bars)
            ax.set_xticks(list(xs), [g.capitalize() for g in GROUPS])
            ax.grid(False, axis="x")
            title = (f"{model_display(teacher)} teacher, " if several_teachers else "") + _gamma_title(gamma)
            panel_title(ax, title + _short_seeds({"teacher": n}, len(study.seeds)))
        axes[0].set_ylim(0, min(100.0, 10 * math.ceil(top * 1.05 / 10)))
        label_outer(axes, None, "mean probability mass (%)")
        figure_legend(fig, list(handles.values()), list(handles))
    return fig, notes


def run_per_class_png(per_class: list[float], class_counts: list[int], title: str) -> bytes:
    """One run's per-class test accuracy against the class's training count, as PNG bytes.

    Drawn with matplotlib's object API (no pyplot state), so the sweep's tracking threads can call it."""
    import io

    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, NullFormatter

    fig = Figure(figsize=(5.0, 3.4))
    ax = fig.add_subplot()
    order = sorted(range(len(class_counts)), key=lambda i: -class_counts[i])
    ax.bar(range(len(order)), [per_class[i] for i in order], color="tab:blue")
    ax.set_xlabel("classes, largest first (training images above)")
    ax.set_ylabel("test accuracy (%)")
    if len(order) <= 20:
        ax.set_xticks(range(len(order)), [str(class_counts[i]) for i in order], fontsize=7)
    else:
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: str(class_counts[order[int(v)]]) if 0 <= int(v) < len(order) else ""))
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3, axis="y")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def run_group_curves_png(histories: dict[str, list[tuple[int, float]]], title: str) -> bytes:
    """One run's accuracy histories ({metric: [(epoch, value)]}, e.g. acc_all, acc_head, ...) on one
    chart, as PNG bytes; the object API, as `run_per_class_png`."""
    import io

    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(5.0, 3.4))
    ax = fig.add_subplot()
    for i, (metric, points) in enumerate(histories.items()):
        steps, values = zip(*points)
        label = metric.replace("val_acc_", "validation ").replace("acc_", "")
        ax.plot(steps, values, color=COLORS[i % len(COLORS)], marker=MARKERS[i % len(MARKERS)], markersize=3,
                linewidth=1.5 if label.endswith("all") else 1.0, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy (%)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncols=len(histories), loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    fig.suptitle(title, fontsize=9, y=0.99)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


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
