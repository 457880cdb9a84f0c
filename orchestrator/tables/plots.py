"""Figures beside the tables (matplotlib, Agg backend): PNG at print resolution (DPI) and PDF.

- ngroups tables: the n(G) curve, one panel per pair (and γ), one line per block (LTKD, LTKD-continuous),
  mean ± std over seeds.
- main tables: per-class accuracy against the class's training count for the teacher, the KD student and
  the reference (LTKD) student, from the runs' per_class_accuracy.json: every seed's run is read (one
  download each), the line is the mean over seeds and the band ± one std, for at most MAX_PANELS pairs × γ.
- main tables: the teacher's mean probability mass on the head / medium / tail groups over the balanced
  test set and over the long-tailed training set (metrics pg_test_* and pg_train_*), as bars with ± one
  std over seeds; skipped with a note when the runs do not carry these metrics.
- one run: `run_per_class_png`, the per-class accuracy of a single run (logged by the sweep per
  distillation run).

Each table function returns the files it wrote and notes (why something was skipped).
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
DPI = 200  # print resolution for the PNGs; the PDFs are vector
FORMATS = ("png", "pdf")
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


def _suptitle(fig, text: str) -> None:
    """A figure title wrapped to the figure's width (a one-panel figure is narrow)."""
    import textwrap

    width = max(30, int(fig.get_figwidth() * 13))
    fig.suptitle("\n".join(textwrap.fill(part, width) for part in text.split("\n")), fontsize=9)


def _save(plt, fig, path: Path) -> list[Path]:
    """The figure as PNG (DPI) and PDF, `path` naming the PNG."""
    fig.tight_layout()
    paths = []
    for fmt in FORMATS:
        target = path.with_suffix("." + fmt)
        fig.savefig(target, dpi=DPI)
        paths.append(target)
    plt.close(fig)
    return paths


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample std (0 for one value), as the tables compute them."""
    n = len(values)
    mean = sum(values) / n
    return mean, (math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0)


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
    _suptitle(fig, f"{table.name}: {metric} against n(G), mean ± std over seeds")
    return _save(plt, fig, out / f"{table.study}_{table.name}_ngroups_curve.png"), []


def _seed_runs(trials: list[Trial], finished: Mapping[str, RunRecord]) -> list[RunRecord]:
    return [finished[t.config_hash] for t in sorted(trials, key=lambda t: t.config.seed) if t.config_hash in finished]


def per_class_plot(table: Table, study: StudySpec, trials: list[Trial], finished: Mapping[str, RunRecord],
                   read_json, out: Path) -> tuple[list[Path], list[str]]:
    """Per-class accuracy vs training count: teacher, KD student, reference (LTKD) student; mean ± std over seeds."""
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
                stats = [_mean_std([acc[i] for acc in seeds]) for i in range(len(counts))]
                lines.append((f"{name} (n={len(seeds)})", counts, [m for m, _ in stats], [e for _, e in stats]))
        if lines:
            data.append((pair, gamma, lines))
    if not data:
        return [], notes + [f"{table.name}: per-class plot skipped: no run has {PER_CLASS_ARTIFACT}"]
    plt, fig, axes = _grid(len(data), 4.4, 3.4)
    for ax, (pair, gamma, lines) in zip(axes, data):
        for name, counts, acc, spread in lines:
            order = sorted(range(len(counts)), key=lambda i: -counts[i])
            xs = [counts[i] for i in order]
            ys = [acc[i] for i in order]
            es = [spread[i] for i in order]
            k = max(1, len(xs) // 10)  # running mean over a tenth of the classes, in count order
            smooth = [sum(ys[max(0, i - k // 2): i + k // 2 + 1]) / len(ys[max(0, i - k // 2): i + k // 2 + 1]) for i in range(len(ys))]
            line, = ax.plot(xs, smooth, label=name)
            ax.errorbar(xs, ys, yerr=es, fmt="o", ms=2.5, elinewidth=0.8, alpha=0.5, color=line.get_color())
        ax.set_xscale("log")
        # Plain numbers on the major ticks and no labelled minor ticks: they collide on short ranges.
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("training images of the class")
        ax.set_ylabel("test accuracy (%)")
        ax.set_ylim(-3, 103)
        ax.set_title(f"{pair_label(*pair)}, {gamma_label(gamma)}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    _suptitle(fig, f"{table.name}: per-class test accuracy against class size\n"
                   "(points: mean ± std over seeds; line: running mean over a tenth of the classes)")
    return _save(plt, fig, out / f"{table.study}_{table.name}_per_class.png"), notes


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
                stats = {k: _mean_std([r.metrics[k] for r in recs]) for k in keys}
                panels.append((teacher, gamma, len(recs), stats))
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
        for offset, split, label in ((-width / 2, "test", "balanced (test)"), (width / 2, "train", "long-tailed (train)")):
            ax.bar([x + offset for x in xs], [means[f"pg_{split}_{g}"][0] for g in GROUPS], width, label=label,
                   yerr=[means[f"pg_{split}_{g}"][1] for g in GROUPS], capsize=3)
        ax.set_xticks(list(xs), [g.capitalize() for g in GROUPS])
        ax.set_ylabel("mean group probability (%)")
        ax.set_title(f"teacher {teacher}, {gamma_label(gamma)} ({n} seed{'s' if n > 1 else ''})")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7)
    _suptitle(fig, "the teacher's probability mass per class group, mean ± std over seeds")
    return _save(plt, fig, out / f"{table.study}_{table.name}_teacher_group_prob.png"), notes


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
