"""`ltkd tables --versus paper` (issue 15): each cell beside the paper's value, the difference, and a
mark where it exceeds two seed standard deviations; from a fixture store with known numbers."""
from __future__ import annotations

import io

import pandas as pd

from orchestrator.cli import main
from test_tables import MAIN, fill, main_values

# One pair, γ 10 and 50, Tail and All: four columns in the study's order.
PAPER = MAIN.replace("name: golden_main", "name: golden_versus") + """
paper:
  main:
    source: "a made-up table for this test"
    rows:
      LTKD: [44.0, 60.0, 40.0, null]
      KD: [45.0, 65.5, null, null]
      DKD: [null, null, 30.0, 50.0]
"""


def test_versus_paper_shows_ours_the_paper_and_marked_differences(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    path, _ = fill(uri, tmp_path, PAPER, main_values)
    assert main(["tables", str(path), "--tracking-uri", uri, "--versus", "paper"]) == 0
    out = capsys.readouterr().out
    assert "Each cell: ours / the paper's / ours − paper; ! marks a difference larger than 2 seed standard deviations. " \
           "Paper: a made-up table for this test." in out
    lines = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in out.splitlines()
             if line.startswith("| ") and not line.startswith("| ---")}
    # LTKD γ10 Tail: 45.00 ± 1.00 vs 44 -> +1.00 (within 2 std); All: 67.00 ± 1.00 vs 60 -> +7.00 (marked)
    assert lines["LTKD"][:3] == ["45.00 ± 1.00 / 44.00 / +1.00", "67.00 ± 1.00 / 60.00 / +7.00!", "16.33 ± 1.53 / 40.00 / -23.67!"]
    assert lines["LTKD"][3] == "44.87 ± 1.10"  # no paper value: ours alone
    # KD γ10 Tail has two seeds (40, 42): 41.00 ± 1.41 vs 45 -> -4.00, beyond 2 std (2.83)
    assert lines["KD"][0] == "41.00 ± 1.41 (n=2) / 45.00 / -4.00!"
    # DKD γ50 has no run: nothing to compare
    assert lines["DKD"][2:] == ["– / 30.00 / –", "– / 50.00 / –"]
    assert "Teacher" not in lines  # rows without paper values are left out

    assert main(["tables", str(path), "--tracking-uri", uri, "--versus", "paper", "--format", "csv"]) == 0
    frame = pd.read_csv(io.StringIO(capsys.readouterr().out))
    row = frame[(frame.row == "LTKD") & (frame.gamma == 10) & (frame.group == "All")].iloc[0]
    assert (row.paper, round(row.paper_diff, 6), bool(row.paper_far), row.paper_source) == (60.0, 7.0, True, "a made-up table for this test")
    assert frame[frame.row == "Teacher"].paper.isna().all()


def test_versus_paper_without_a_paper_block_is_one_line(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    path, _ = fill(uri, tmp_path, MAIN, main_values)
    assert main(["tables", str(path), "--tracking-uri", uri, "--versus", "paper"]) == 2
    assert capsys.readouterr().err.strip() == "ltkd: error: --versus paper: study 'golden_main' has no `paper:` block (the paper's values per table and row)"


def test_the_paper_blocks_of_the_studies_give_every_column_of_their_rows():
    from pathlib import Path

    from orchestrator.study import expand, load_study
    from orchestrator.tables import build_tables
    from orchestrator.tables.paper import paper_cells

    studies = Path(__file__).resolve().parents[1] / "studies"
    expected = {"imagenet_lt_main": ("main", 9), "ablation_cross_group": ("cross_group", 3), "ablation_components": ("components", 4)}
    for name, (table_name, rows) in expected.items():
        study = load_study(studies / f"{name}.yaml")
        [table] = [t for t in build_tables(study, expand(study), {}) if t.name == table_name]
        cells = paper_cells(table, study)
        assert len(cells) == rows * len(table.cols) == rows * 12, name
    ltkd = paper_cells([t for t in build_tables(load_study(studies / "imagenet_lt_main.yaml"),
                                                expand(load_study(studies / "imagenet_lt_main.yaml")), {}) if t.name == "main"][0],
                       load_study(studies / "imagenet_lt_main.yaml"))
    assert ltkd[("LTKD", ("resnet50→mobilenet_v1", "γ=20", "Tail"))] == 48.55


def test_report_links_each_cell_to_its_runs_and_counts_the_plan(tmp_path, capsys, monkeypatch):
    import re

    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    path, trials = fill(uri, tmp_path, MAIN.replace("name: golden_main", "name: golden_report"), main_values)
    monkeypatch.setenv("LTKD_UI_URL", "https://mlflow-ui.lab.example:8443/")  # the UI behind a proxy: the links follow it
    assert main(["report", str(path), "--tracking-uri", uri, "--out", str(tmp_path / "report"), "--no-log"]) == 0
    assert "golden_report_report.html and" in capsys.readouterr().out
    page = (tmp_path / "report" / "golden_report_report.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and '<meta charset="utf-8">' in page and "±" in page
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("golden_report").experiment_id
    hashes = {t.config_hash: t.config.seed for t in trials if t.row == "LTKD" and t.config.gamma == 10}
    ltkd_g10 = sorted((hashes[r.data.tags["config_hash"]], r.info.run_id) for r in client.search_runs([exp], "tags.row = 'LTKD'")
                      if r.data.tags["config_hash"] in hashes)
    assert len(ltkd_g10) == 3
    for seed, run_id in ltkd_g10:
        assert f'href="https://mlflow-ui.lab.example:8443/#/experiments/{exp}/runs/{run_id}?workflowType=machine_learning">s{seed}</a>' in page
    md = (tmp_path / "report" / "golden_report_report.md").read_text()
    assert "Study 'golden_report' (no description): 30 planned trials: 26 done, 0 running, 0 failed, 4 missing." in md
    completeness = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in md.split("### Completeness")[1].splitlines()
                    if line.startswith("| ") and not line.startswith("| ---")}
    assert completeness["KD"][:2] == ["2 done · 1 missing"] * 2 and completeness["LTKD"] == ["3 done"] * 4
    assert completeness["DKD"][2:] == ["3 missing"] * 2
    assert not re.search(r"Traceback", page)
