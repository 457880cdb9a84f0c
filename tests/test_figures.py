"""Figures and table output a paper and a terminal can take: the figures' properties read from their
matplotlib objects (built from small in-memory run records, no store), the files they save, the LaTeX
caption and names, the report's marks, and the counts in the tables' lines."""
from __future__ import annotations

import io
import re
import types
from pathlib import Path

import pytest
import yaml
from matplotlib.container import BarContainer, ErrorbarContainer
from matplotlib.text import Text

from orchestrator.study import expand, parse_study
from orchestrator.tables import build_tables, render
from orchestrator.tables.console import print_tables, written_line
from orchestrator.tables.core import model_display
from orchestrator.tables.plots import (
    caption_of, log_ticks, ngroups_figure, per_class_figure, per_class_plot, teacher_group_prob_figure,
)
from orchestrator.tables.regenerate import Regeneration
from orchestrator.tables.report import write_report
from orchestrator.tables.style import COLUMN_WIDTH_IN, MIN_FONT_PT
from orchestrator.tracking import RunRecord
from orchestrator.words import count
from trainer.datasets import long_tailed_counts

STUDY = """
name: fig
dataset: {name: digits, gammas: [10, 50]}
pairs: [{teacher: cnn_w32, student: cnn_w8}]
methods: {kd: {}, ltkd: {}}
seeds: [0, 1, 2]
tables: [{kind: main, name: main}]
"""
# Final accuracies per row (seed s adds s): LTKD best, KD second among the method rows.
ACCURACY = {"Teacher": (70.0, 90.0), "Student": (30.0, 80.0), "KD": (40.0, 84.0), "LTKD": (50.0, 86.0)}
PG = {"pg_test_head": 33.0, "pg_test_medium": 36.0, "pg_test_tail": 31.0,
      "pg_train_head": 60.0, "pg_train_medium": 30.0, "pg_train_tail": 10.0}
INTERNAL = ("main", "running mean", "fig:", "cnn_", "acc_", "n=")


def records(text: str = STUDY, skip=lambda trial: False):
    """(study, trials, finished runs by config_hash, read_json) with known numbers, all in memory."""
    study = parse_study(yaml.safe_load(text))
    trials = expand(study)
    finished = {}
    for i, t in enumerate(trials):
        if skip(t):
            continue
        tail, overall = ACCURACY[t.row]
        metrics = {"acc_tail": tail + t.config.seed, "acc_all": overall + t.config.seed}
        if t.role == "teacher":
            metrics |= {k: v + t.config.seed for k, v in PG.items()}
        finished[t.config_hash] = RunRecord(f"run{i}", t.config_hash, "FINISHED", metrics, {}, {}, "")
    by_run = {rec.run_id: t for t in trials if (rec := finished.get(t.config_hash))}

    def read_json(run_id: str, name: str) -> dict:
        t = by_run[run_id]
        counts = long_tailed_counts(144, 10, t.config.gamma)
        base = ACCURACY[t.row][0]
        return {"class_counts": counts, "per_class_accuracy": [base + 2 * (9 - c) + t.config.seed for c in range(10)]}

    return study, trials, finished, read_json


@pytest.fixture(scope="module")
def main_records():
    study, trials, finished, read_json = records()
    (table,) = build_tables(study, trials, finished)
    return study, trials, finished, read_json, table


def _texts(fig) -> list[Text]:
    return [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]


def _assert_paper_style(fig, panels: int) -> list:
    """What every figure keeps: one column wide, fonts >= 7 pt, shared y range, one figure legend."""
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == panels
    assert fig.get_figwidth() == pytest.approx(COLUMN_WIDTH_IN)
    assert len({ax.get_ylim() for ax in axes}) == 1  # the same y range in every panel
    assert all(ax.get_legend() is None for ax in axes) and len(fig.legends) == 1
    sizes = {t.get_text(): t.get_fontsize() for t in _texts(fig)}
    assert min(sizes.values()) >= MIN_FONT_PT, sizes
    assert all(t.get_fontsize() >= MIN_FONT_PT for t in fig.legends[0].get_texts())
    for word in INTERNAL:
        assert not [t for t in sizes if word in t], (word, sizes)
    return axes


def _error_bars(ax) -> list[ErrorbarContainer]:
    """The error bars of a panel (a bar chart's too: matplotlib lists them among the containers)."""
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert all(c.errorbar in bars for c in ax.containers if isinstance(c, BarContainer))
    return bars


def test_per_class_figure_paper_style(main_records):
    study, trials, finished, read_json, table = main_records
    fig, notes = per_class_figure(table, study, trials, finished, read_json)
    assert notes == []
    axes = _assert_paper_style(fig, 2)
    assert [ax.get_title() for ax in axes] == ["γ = 10", "γ = 50"]
    assert len({ax.get_xlim() for ax in axes}) == 1  # one class-size axis for both panels
    assert axes[0].get_ylim() == (-3, 103)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["Teacher", "Student", "KD", "LTKD"]
    for ax in axes:
        labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
        assert len(labels) > 1 and labels == ["2", "5", "10", "20", "50", "100"], labels
        bars = _error_bars(ax)
        assert len(bars) == 4
        for bar in bars:
            _, caps, _ = bar.lines
            assert len(caps) == 2 and all(c.get_markersize() > 0 for c in caps)  # caps below and above
            assert bar.lines[0].get_alpha() in (None, 1.0)  # drawn in full, not faint
    # the seeds' spread: seed s adds s to every class, so each point's std over seeds 0, 1, 2 is 1
    _, _, (spread,) = _error_bars(axes[0])[0].lines
    heights = [seg[1][1] - seg[0][1] for seg in spread.get_segments()]
    assert heights == pytest.approx([2.0] * 10)  # ± 1 std


def test_per_class_points_group_a_tenth_of_the_classes_above_thirty():
    from orchestrator.tables.plots import _points

    counts = long_tailed_counts(500, 100, 100)
    seeds = [[float(i % 10) + s for i in range(100)] for s in range(2)]
    xs, means, stds = _points(counts, seeds)
    assert len(xs) == 10 and xs == sorted(xs, reverse=True)
    assert means[0] == pytest.approx(sum(range(10)) / 10 + 0.5) and stds == pytest.approx([0.5 ** 0.5] * 10)
    xs, means, _ = _points([5, 9, 7], [[10.0, 90.0, 70.0]])  # few classes: a point each, largest first
    assert xs == [9, 7, 5] and means == [90.0, 70.0, 10.0]


def test_log_ticks_label_every_range_more_than_once():
    assert log_ticks(14, 144) == [20, 50, 100]  # the γ = 10 range: decades alone gave one label (100)
    assert log_ticks(2, 144) == [2, 5, 10, 20, 50, 100]
    assert log_ticks(5, 500) == [10, 30, 100, 300]  # 1-2-5 would give 7
    assert log_ticks(40, 60) == [40, 60]
    assert log_ticks(7, 7) == [7]


def test_saved_figures_are_vector_pdf_with_embedded_truetype_and_png_one_column_wide(main_records, tmp_path):
    study, trials, finished, read_json, table = main_records
    files, _ = per_class_plot(table, study, trials, finished, read_json, tmp_path)
    assert [f.name for f in files] == ["fig_main_per_class.png", "fig_main_per_class.pdf"]
    pdf = files[1].read_bytes()
    assert b"/FontFile2" in pdf and b"/Type3" not in pdf  # TrueType embedded, no type-3 fonts
    (box,) = re.findall(rb"/MediaBox \[\s*0 0 ([\d.]+) ([\d.]+)\s*\]", pdf)
    assert float(box[0]) == pytest.approx(COLUMN_WIDTH_IN * 72)
    png = files[0].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(png[16:20], "big") == round(COLUMN_WIDTH_IN * 200)
    assert caption_of(files[0]).startswith("Per-class test accuracy") and caption_of(tmp_path / "x.png") == ""


def test_the_legend_sits_at_the_same_place_in_the_png_and_the_pdf(main_records):
    from orchestrator.tables.style import paper_style

    study, trials, finished, read_json, table = main_records
    fig, _ = per_class_figure(table, study, trials, finished, read_json)
    where = {}
    with paper_style():
        for fmt in ("png", "pdf"):
            fig.savefig(io.BytesIO(), format=fmt)  # each save lays the figure out again for its renderer
            box = fig.legends[0].get_window_extent().transformed(fig.transFigure.inverted())
            where[fmt] = (box.x0, box.y0, box.x1, box.y1)
    assert where["png"] == pytest.approx(where["pdf"], abs=0.01)
    assert where["png"][1] > 0.85  # above the panels, inside the figure
    assert all(0 <= v <= 1 for v in where["png"])


def test_teacher_group_probability_figure_shares_its_y_range(main_records):
    study, trials, finished, _, table = main_records
    fig, notes = teacher_group_prob_figure(table, study, trials, finished)
    assert notes == []
    axes = _assert_paper_style(fig, 2)
    assert [ax.get_title() for ax in axes] == ["γ = 10", "γ = 50"]
    assert axes[0].get_ylim() == (0.0, 70.0)  # the highest bar (62 ± 1) rounded up, in both panels
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["balanced test set", "long-tailed training set"]
    for ax in axes:
        assert [t.get_text() for t in ax.get_xticklabels()] == ["Head", "Medium", "Tail"]
        bars = _error_bars(ax)
        assert len(bars) == 2 and all(len(bar.lines[1]) == 2 for bar in bars)


def test_short_panels_say_how_many_seeds_they_have():
    short = lambda t: t.row == "KD" and t.config.gamma == 50 and t.config.seed == 2  # noqa: E731
    study, trials, finished, read_json = records(skip=short)
    (table,) = build_tables(study, trials, finished)
    fig, _ = per_class_figure(table, study, trials, finished, read_json)
    assert [ax.get_title() for ax in fig.axes if ax.get_visible()] == ["γ = 10", "γ = 50\n(KD: 2 of 3 seeds)"]


NGROUPS = """
name: figng
dataset: {name: digits, gammas: [10]}
pairs: [{teacher: resnet32x4, student: resnet8x4}, {teacher: wrn_40_2, student: resnet8x4}]
methods: {ltkd: {n_groups: [3, 5, 10]}}
student_baseline: false
seeds: [0, 1]
tables: [{kind: ngroups}]
"""


def test_ngroups_figure_names_models_and_shares_axes():
    study = parse_study(yaml.safe_load(NGROUPS))
    trials = expand(study)
    finished = {}
    for i, t in enumerate(trials):
        n = t.config.method_params.get("n_groups", 0) if t.role == "distill" else 0
        finished[t.config_hash] = RunRecord(f"r{i}", t.config_hash, "FINISHED",
                                            {"acc_tail": 30.0 + n + 2 * t.config.seed, "acc_all": 60.0}, {}, {}, "")
    (table,) = build_tables(study, trials, finished)
    fig, notes = ngroups_figure(table)
    assert notes == []
    axes = _assert_paper_style(fig, 2)
    # side by side, a long title wraps at a space to its panel's width rather than run into the next one
    assert [ax.get_title() for ax in axes] == ["ResNet32×4 →\nResNet8×4", "WRN-40-2 → ResNet8×4"]
    for ax in axes:
        assert [t.get_text() for t in ax.get_xticklabels()] == ["3", "5", "10"]
        (bar,) = _error_bars(ax)
        assert len(bar.lines[1]) == 2
    assert axes[0].get_ylabel() == "tail-group accuracy (%)"


def test_model_display_names_and_the_latex_caption(main_records):
    assert [model_display(m) for m in ("resnet32x4", "resnet8x4", "wrn_40_2", "mobilenet_v2", "shufflenet_v1", "vgg13",
                                       "cnn_w32", "resnet18", "my_net")] == [
        "ResNet32×4", "ResNet8×4", "WRN-40-2", "MobileNetV2", "ShuffleNetV1", "VGG13", "CNN-w32", "ResNet18", "my_net"]
    *_, table = main_records
    latex = render(table, "latex")
    caption = re.search(r"\\caption\{(.*)\}\n", latex).group(1)
    assert caption == (r"Top-1 accuracy (\%) on Digits-LT, mean $\pm$ std over 3 seeds. Tail: the third of the classes "
                       r"with the fewest training images; All: all classes. $\Delta$ = LTKD $-$ best other row; "
                       r"$^\dagger$ p $<$ 0.05 (paired t-test over seeds).")
    assert r"\multicolumn{4}{c}{CNN-w32 $\to$ CNN-w8}" in latex and "cnn" not in latex
    assert "fig" not in caption and "main" not in caption
    wide = parse_study(yaml.safe_load(STUDY.replace("cnn_w32", "resnet32x4").replace("cnn_w8", "resnet8x4")))
    tables = build_tables(wide, expand(wide), {})
    assert r"{ResNet32$\times$4 $\to$ ResNet8$\times$4}" in render(tables[0], "latex")


def test_report_keeps_best_and_second_marks(main_records, tmp_path):
    study, trials, finished, _, table = main_records
    states = {h: types.SimpleNamespace(status="FINISHED") for h in finished}
    page, md = write_report(study, trials, [table], states, [], "sqlite:///x.db", "1", tmp_path)
    text = page.read_text()
    # LTKD best, KD second in every column; Teacher and Student are never marked
    assert "<strong>51.00 ± 1.00</strong>" in text and "<strong>87.00 ± 1.00</strong>" in text
    assert text.count("<strong>") == 4 and text.count("<u>") == 4 and "<u>41.00 ± 1.00</u>" in text
    assert "<strong>71.00" not in text and "<u>31.00" not in text
    twin = md.read_text()
    assert "Study 'fig' (no description): 24 planned trials: 24 done, 0 running, 0 failed, 0 missing." in twin
    assert "**51.00 ± 1.00**" in twin and "<u>41.00 ± 1.00</u>" in twin


def test_counts_are_pluralised():
    assert [count(n, "run") for n in (0, 1, 2)] == ["0 runs", "1 run", "2 runs"]
    line = Regeneration(tables=[], files=[Path("a.md")], runs=1, missing=1).line()
    assert line.endswith("tables regenerated from 1 run (1 cell short of seeds): 1 file")
    assert written_line([Path("/o/a.md")], Path("/o")) == "wrote 1 file to /o/: a.md"
    one = "name: one\ndataset: {name: digits, gammas: [10]}\npairs: [{teacher: cnn_w16, student: cnn_w4}]\nmethods: {kd: {}}\nseeds: [0]\n"
    study, trials, finished, _ = records(one, skip=lambda t: t.row == "KD")
    (table,) = build_tables(study, trials, finished)
    assert table.missing() == ["KD / cnn_w16→cnn_w4 / γ=10: 0 of 1 seed"]
    err = io.StringIO()
    print_tables([table], None, io.StringIO(), err)
    assert err.getvalue().splitlines()[0] == "main: 1 cell short of seeds (shown as – or with (n=…)):"


def test_wide_tables_come_in_blocks_of_columns_that_fit_the_terminal():
    from orchestrator.tables.console import _column_blocks

    assert _column_blocks([12, 12, 12, 12], 7, 60) == [[0, 1, 2], [3]]  # 7 + 3 × 15 = 52 fits, a fourth does not
    assert _column_blocks([12, 12], 7, 200) == [[0, 1]]
    assert _column_blocks([90, 5], 7, 40) == [[0], [1]]  # a column wider than the terminal still gets a block


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_tables_print_markdown_when_piped_or_asked_for_and_a_plain_table_on_a_terminal(main_records):
    """(The real terminal, a pseudo-terminal around `ltkd tables`, is in test_tables.py.)"""
    *_, table = main_records
    for out, fmt in ((io.StringIO(), None), (_Terminal(), "md")):
        print_tables([table], fmt, out, io.StringIO())
        text = out.getvalue()
        assert text.startswith("fig: main — Top-1 accuracy (%) on Digits-LT") and "**51.00 ± 1.00**" in text and "<u>41.00" in text
    terminal = _Terminal()
    print_tables([table], None, terminal, io.StringIO())
    assert "**" not in terminal.getvalue() and "51.00 ± 1.00" in terminal.getvalue()
