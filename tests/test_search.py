"""`ltkd search` / `ltkd best` (issue 11) with a real local Ray, a real Optuna storage and MLflow store:
ASHA stops trials early, trials nest under their parent, the chosen point is the best completed trial
on the validation metric, no test metric reaches the search, a stopped search resumes without
repeating a finished trial, and a grid study runs the chosen point."""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import optuna
import pytest
import yaml

from orchestrator.cli import main
from orchestrator.search.optuna_adapter import COMPLETED_LABEL, PRUNED_LABEL, optuna_figures, optuna_rdb_storage
from orchestrator.search.parents import search_cell
from orchestrator.search.space import SEARCH_KEY_TAG, SEARCH_STATE_TAG, targets
from orchestrator.study import expand, load_study
from orchestrator.tables import build_tables
from orchestrator.tables.regenerate import read_finished
from orchestrator.tracking import Tracker
from orchestrator.words import count

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "studies" / "search_smoke.yaml"
BIN = Path(sys.executable).parent


def _ostudy(folder: Path, study_file: Path, index: int | None = None):
    """The Optuna study of the study file's search (its only one, or number `index`), and its target."""
    study = load_study(study_file, search_results_needed=False)
    chosen = targets(study)
    if index is None:
        (target,) = chosen
    else:
        target = chosen[index]
    storage = optuna_rdb_storage(f"sqlite:///{folder}/mlflow-optuna.db")  # polled while a search creates it
    return optuna.load_study(study_name=f"{study.name} | {target.label} | {target.key}", storage=storage), target


def _runs(uri: str, name: str):
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    return client, client.search_runs([exp.experiment_id], run_view_type=mlflow.entities.ViewType.ALL, max_results=1000)


@pytest.fixture(scope="module")
def searched(ray_local, tmp_path_factory):
    """search_smoke searched once in-process; every result Tune hands the driver is recorded, and what
    it printed (plain lines: stdout is no terminal here)."""
    folder = tmp_path_factory.mktemp("search")
    study_file = folder / "search_smoke.yaml"
    shutil.copy(SMOKE, study_file)
    uri = f"sqlite:///{folder}/mlflow.db"
    seen: list[dict] = []
    from orchestrator.execution import schedule

    original = schedule.SweepCallback.on_trial_result

    def spy(self, iteration, trials, trial, result, **info):
        if type(self).__name__ == "SearchCallback":  # not the teacher's trial, which the sweep runs first
            seen.append(dict(result))
        return original(self, iteration, trials, trial, result, **info)

    console = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(console):
        mp.setattr(schedule.SweepCallback, "on_trial_result", spy)
        started = time.time()
        code = main(["search", str(study_file), "--tracking-uri", uri])
        wall = time.time() - started
    assert code == 0, console.getvalue()[-3000:]
    return folder, study_file, uri, seen, wall, console.getvalue()


def test_asha_stops_trials_early_and_they_are_marked_pruned(searched):
    folder, study_file, uri, _, wall, _ = searched
    ostudy, target = _ostudy(folder, study_file)
    states = [t.state for t in ostudy.trials]
    assert len(states) == 8 and optuna.trial.TrialState.RUNNING not in states
    pruned = [t for t in ostudy.trials if t.state == optuna.trial.TrialState.PRUNED]
    complete = [t for t in ostudy.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert pruned and complete, states
    client, runs = _runs(uri, "search_smoke")
    children = {int(r.data.tags["search_trial"]): r for r in runs if r.data.tags.get(SEARCH_KEY_TAG) == target.key
                and r.data.tags.get("role") == "distill"}
    epochs = target.base.recipe.epochs
    for t in pruned:
        # FINISHED, not KILLED (a failure's red mark, and what a stopped search continues): told by its tags,
        # and grouped apart from the completed trials in the runs view, so its cell's mean leaves it out
        run = children[t.number]
        assert run.info.status == "FINISHED" and run.data.tags["pruned"] == "true"
        assert run.data.tags[SEARCH_STATE_TAG] == "pruned" and run.data.tags["cell"] == search_cell(target, pruned=True)
        logged = client.get_metric_history(run.info.run_id, "val_acc_tail")
        assert len(logged) == int(run.data.tags["pruned_after_epoch"]) < epochs  # fewer epochs than a finished trial
        assert max(t.intermediate_values) == len(logged)
    for t in complete:
        run = children[t.number]
        assert run.info.status == "FINISHED" and "pruned" not in run.data.tags
        assert run.data.tags[SEARCH_STATE_TAG] == "complete" and run.data.tags["cell"] == search_cell(target)
        assert len(client.get_metric_history(run.info.run_id, "val_acc_tail")) == epochs
    print(f"search_smoke: {len(complete)} complete, {len(pruned)} pruned in {wall:.0f} s")


def test_the_search_console_says_each_line_once_in_its_own_words_with_each_trials_metric(searched):
    folder, study_file, _, _, _, console = searched
    ostudy, target = _ostudy(folder, study_file)
    lines = [line for line in console.splitlines() if line.strip()]
    assert len(lines) == len(set(lines)), [line for line in lines if lines.count(line) > 1]
    assert [line for line in lines if line.startswith("packing: ")] == [
        "packing: 2 trials at once per node of 2 CPU / 0 GPU (CPU allows 2; limited by CPU)"]
    assert sum(line.startswith("runs: experiment 'search_smoke'") for line in lines) == 1
    assert "sweep" not in console and any(line.startswith("teachers done in ") for line in lines), console
    epochs = target.base.recipe.epochs
    for t in ostudy.trials:
        name = f"search {target.label} #{t.number}"
        (done,) = [m for m in (re.fullmatch(rf"\[\d/8\] (PRUNED|FINISHED) +{re.escape(name)} +(.+)", line) for line in lines) if m]
        status, detail = done.groups()
        if t.state == optuna.trial.TrialState.PRUNED:
            last = max(t.intermediate_values)
            assert status == "PRUNED" and last < epochs
            assert detail == f"pruned by ASHA after epoch {last} (val_acc_tail {t.intermediate_values[last]:.1f} at epoch {last})"
        else:
            assert status == "FINISHED" and re.fullmatch(rf"val all +\d+\.\d  tail {t.value:5.1f}  \(\d+\.\d s\)", detail), detail


def test_optunas_plots_name_the_metric_and_show_the_pruned_trials(searched):
    import matplotlib.pyplot as plt
    from matplotlib.text import Text

    folder, study_file, *_ = searched
    ostudy, _ = _ostudy(folder, study_file)
    figures = optuna_figures(ostudy, "val_acc_tail")
    try:
        assert set(figures) == {"optimization_history", "param_importances", "parallel_coordinate"}
        for name, fig in figures.items():
            texts = [t.get_text() for t in fig.findobj(Text)]
            assert "val_acc_tail" in texts and not [t for t in texts if "Objective" in t], (name, texts)
        (history,) = figures["optimization_history"].axes
        assert history.get_ylabel() == "val_acc_tail"
        points = {c.get_label(): c.get_offsets().tolist() for c in history.collections}
        S = optuna.trial.TrialState
        assert points[COMPLETED_LABEL] == [[t.number, t.value] for t in ostudy.trials if t.state == S.COMPLETE]
        # Optuna leaves the pruned trials out: they are there at their last validation value
        assert points[PRUNED_LABEL] == [[t.number, t.intermediate_values[max(t.intermediate_values)]]
                                        for t in ostudy.trials if t.state == S.PRUNED]
        legend = [t.get_text() for t in history.get_legend().get_texts()]
        assert COMPLETED_LABEL in legend and PRUNED_LABEL in legend
    finally:
        for fig in figures.values():
            plt.close(fig)


def test_every_trial_is_nested_under_its_parent_which_holds_the_best_completed_point(searched):
    folder, study_file, uri, _, _, _ = searched
    ostudy, target = _ostudy(folder, study_file)
    client, runs = _runs(uri, "search_smoke")
    (parent,) = [r for r in runs if r.data.tags.get("role") == "search"]
    children = [r for r in runs if r.data.tags.get(SEARCH_KEY_TAG) == target.key and r.data.tags.get("role") == "distill"]
    assert len(children) == 8 and all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in children)
    assert parent.info.status == "FINISHED" and parent.data.tags[SEARCH_KEY_TAG] == target.key
    finished = [r for r in children if r.data.tags[SEARCH_STATE_TAG] == "complete"]
    best = max(finished, key=lambda r: (r.data.metrics["val_acc_tail"], -int(r.data.tags["search_trial"])))
    assert parent.data.metrics["best_val_acc_tail"] == best.data.metrics["val_acc_tail"] == ostudy.best_value
    assert parent.data.tags["best_run_id"] == best.info.run_id
    chosen = json.loads(parent.data.tags["best_params"])
    assert chosen == ostudy.best_params
    for key, value in chosen.items():
        assert float(best.data.params[key]) == pytest.approx(float(value), rel=1e-9)
    assert parent.data.metrics["trials_complete"] + parent.data.metrics["trials_pruned"] == 8
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "search")}
    assert {"search/best.json", "search/optimization_history.png", "search/parallel_coordinate.png",
            "search/param_importances.png"} <= artifacts
    local = client.download_artifacts(parent.info.run_id, "search/optimization_history.png", str(folder / "dl"))
    assert Path(local).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the split is recorded with each finished trial (it keeps no checkpoint): 10 validation images per
    # class, none of them among the training images; and the runs say how it was made
    split = json.loads(Path(client.download_artifacts(best.info.run_id, "long_tailed_split.json", str(folder / "dl"))).read_text())
    assert split["validation_per_class"] == 10 and len(split["validation_indices"]) == 100
    assert not set(split["validation_indices"]) & set(split["train_indices"])
    assert all(r.data.params["validation_per_class"] == "10" for r in children)


def _row_marks(dom: str) -> dict[str, str]:
    """Run name -> the status mark drawn in its row's Created cell (its SVG path), of the rows drawn."""
    rows = re.findall(r'href="#/experiments/\d+/runs/\w+"><span[^>]*>([^<]+)</span>.*?col-id="runDateAndNestInfo".*?<path[^>]* d="([^"]+)"',
                      dom, flags=re.S)
    return {name.replace("&gt;", ">"): mark for name, mark in rows}


def test_the_runs_view_shows_search_trials_by_their_metric_and_pruned_ones_as_finished(searched, tmp_path):
    """In the real MLflow UI (headless Chromium): the study's link opens the runs grouped by cell with
    the search's metric (val_acc_*) as the first columns, a trial's row shows its value, and a pruned
    trial carries the finished mark (the teacher's), in a group of its own."""
    from conftest import start_mlflow_server, stop
    from test_mlflow_ui import BROWSER, header_columns, page, text_of
    from orchestrator.tracking import experiment_url

    if BROWSER is None:
        pytest.fail("no Chromium on this machine: `apt-get install -y chromium` (make test installs it)", pytrace=False)
    folder, study_file, uri, _, _, _ = searched
    client, runs = _runs(uri, "search_smoke")
    proc, url = start_mlflow_server(folder)
    try:
        dom = page(experiment_url(url, runs[0].info.experiment_id), tmp_path, "search-runs.png", budget_ms=20000)
    finally:
        stop(proc)
    text = text_of(dom)
    metrics = [c for c in header_columns(dom) if c.startswith("metrics.")]
    assert metrics[:4] == ["metrics.`val_acc_tail`", "metrics.`val_acc_all`", "metrics.`val_acc_head`", "metrics.`val_acc_medium`"], metrics
    assert "Group: search LTKD w32>w8 γ10 pruned" in text and "Group: search LTKD w32>w8 γ10 " in text, text[:3000]
    trials = {r.info.run_name: r for r in runs if r.data.tags.get("role") == "distill" and r.data.tags.get(SEARCH_STATE_TAG)}
    best = max((r for r in trials.values() if r.data.tags[SEARCH_STATE_TAG] == "complete"), key=lambda r: r.data.metrics["val_acc_tail"])
    # its row: the name, then (in the metric columns, drawn after the pinned ones) its val_acc_tail as logged
    assert best.info.run_name.replace(">", "&gt;") in dom and f"{best.data.metrics['val_acc_tail']:g}" in text, text[:3000]
    marks = _row_marks(dom)
    teacher = next(r.info.run_name for r in runs if r.data.tags.get("role") == "teacher")
    pruned = [name for name, r in trials.items() if r.data.tags[SEARCH_STATE_TAG] == "pruned"]
    assert teacher in marks and pruned and all(name in marks for name in pruned), (sorted(marks), pruned)
    assert {marks[name] for name in pruned} == {marks[teacher]}  # not a failure's or a kill's mark


def test_no_test_metric_reaches_the_search_or_its_runs(searched):
    folder, study_file, uri, seen, _, _ = searched
    ostudy, target = _ostudy(folder, study_file)
    search_results = [r for r in seen if "val_acc_tail" in r or "epoch" in r]
    assert len(search_results) >= 8 * 2
    # what Tune handed the driver (the searcher, ASHA and the tracking callback all read these): no acc_*
    read = {k for r in seen for k in r}
    assert "val_acc_tail" in read and not {k for k in read if k.startswith(("acc_", "best_acc_"))}, sorted(read)
    _, runs = _runs(uri, "search_smoke")
    for r in runs:
        if r.data.tags.get(SEARCH_KEY_TAG) == target.key:
            assert not [k for k in r.data.metrics if k.startswith(("acc_", "best_acc_"))], (r.info.run_name, r.data.metrics)
    # Optuna's values are the validation metric the runs logged
    assert sorted(t.value for t in ostudy.trials if t.state == optuna.trial.TrialState.COMPLETE) == sorted(
        r.data.metrics["val_acc_tail"] for r in runs if r.data.tags.get(SEARCH_KEY_TAG) == target.key
        and r.data.tags.get("role") == "distill" and r.data.tags.get(SEARCH_STATE_TAG) == "complete")


def test_rerun_of_a_finished_search_does_nothing(searched, capsys):
    folder, study_file, uri, _, _, _ = searched
    _, before = _runs(uri, "search_smoke")
    capsys.readouterr()
    assert main(["search", str(study_file), "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    assert "search ltkd cnn_w32>cnn_w8 g10: done (" in out and "started" not in out
    _, after = _runs(uri, "search_smoke")
    assert len(after) == len(before)
    ostudy, _ = _ostudy(folder, study_file)
    assert len(ostudy.trials) == 8
    # `ltkd status` says where the search stands, from the tracking store alone
    assert main(["status", str(study_file), "--tracking-uri", uri]) == 0
    status = capsys.readouterr().out
    counts = {s.name: sum(t.state == s for t in ostudy.trials) for s in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)}
    assert (f"search ltkd cnn_w32>cnn_w8 g10: {counts['COMPLETE']} complete, {counts['PRUNED']} pruned, 0 failed, 0 running of 8; "
            f"best val_acc_tail {ostudy.best_value:.2f} (trial #{ostudy.best_trial.number})") in status, status


def test_best_writes_the_override_and_the_grid_runs_the_chosen_point(searched, capsys):
    folder, study_file, uri, _, _, _ = searched
    capsys.readouterr()
    assert main(["best", str(study_file), "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    ostudy, target = _ostudy(folder, study_file)
    written = yaml.safe_load((folder / "search_smoke.best.yaml").read_text())
    (point,) = written["points"]
    assert point["params"] == ostudy.best_params and point["val_acc_tail"] == ostudy.best_value
    assert (point["teacher"], point["student"], point["gamma"]) == ("cnn_w32", "cnn_w8", 10.0)
    assert "ltkd cnn_w32>cnn_w8 g10: val_acc_tail" in out and "acc_tail" not in out.replace("val_acc_tail", "")
    # The pruned runs are FINISHED in the store, yet no cell of the grid's table takes them for a trial.
    grid_study = load_study(folder / "search_smoke.yaml")
    grid_trials = expand(grid_study)
    tracker = Tracker(uri)
    exp_id = tracker.experiment_id("search_smoke", create=False)
    everything = tracker.final_metrics_by_hash(exp_id)
    _, runs = _runs(uri, "search_smoke")
    pruned = {r.data.tags["config_hash"] for r in runs if r.data.tags.get("pruned") == "true"}
    assert pruned and pruned <= set(everything)
    (table,) = build_tables(grid_study, grid_trials, everything)
    assert {(r, table.cell(r, c).n) for r in table.rows for c in table.cols} == {("Teacher", 1), ("KD", 0), ("LTKD", 0), ("Δ", 0)}
    assert {t.role for t in grid_trials if t.config_hash in read_finished(tracker, exp_id, grid_trials)} == {"teacher"}
    # The grid (one seed here, to keep it short): KD and LTKD at the chosen point, on the search's own teacher.
    grid = folder / "search_smoke.yaml"
    grid.write_text(grid.read_text().replace("seeds: [0, 1, 2]", "seeds: [0]"))
    assert main(["sweep", str(grid), "--tracking-uri", uri, "--tables-every", "0"]) == 0
    out = capsys.readouterr().out
    assert "1 already done before" in out  # the teacher the search trained
    client, runs = _runs(uri, "search_smoke")
    (ltkd,) = [r for r in runs if r.data.tags.get("row") == "LTKD" and r.data.tags.get("role") == "distill"]
    assert ltkd.info.status == "FINISHED" and "acc_tail" in ltkd.data.metrics  # the table's run reports on the test set
    for key, value in ostudy.best_params.items():
        assert float(ltkd.data.params[key]) == pytest.approx(float(value), rel=1e-9)
    assert main(["tables", str(grid), "--tracking-uri", uri]) == 0
    table = capsys.readouterr().out
    assert "LTKD" in table and "KD" in table


def test_search_and_best_refuse_bad_input_with_one_line(tmp_path, capsys):
    plain = tmp_path / "plain.yaml"
    plain.write_text((REPO / "studies" / "smoke.yaml").read_text())
    for command in ("search", "best"):
        assert main([command, str(plain), "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "the study has no search: block" in err, err
    study = tmp_path / "search_smoke.yaml"
    shutil.copy(SMOKE, study)
    assert main(["best", str(study), "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no search of this study has a completed trial" in err, err
    # the grid needs the search's file: refused before anything runs, naming what to do
    assert main(["sweep", str(study), "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "methods.ltkd.from_search = 'search_smoke': no file" in err and "ltkd best" in err, err
    # a file of another search, or one missing this study's pair, is refused too
    (tmp_path / "search_smoke.best.yaml").write_text(yaml.safe_dump({"method": "ltkd", "points": [
        {"teacher": "cnn_w16", "student": "cnn_w8", "gamma": 10, "params": {"alpha": 2.0}}]}))
    assert main(["sweep", str(study), "--dry-run", "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]) == 2
    err = capsys.readouterr().err
    assert "has no point for cnn_w32>cnn_w8 γ=10 (it has: cnn_w16>cnn_w8 γ=10)" in err, err
    (tmp_path / "search_smoke.best.yaml").unlink()
    study.write_text(SMOKE.read_text().replace("grace_period: 2", "grace_period: 16"))
    assert main(["search", str(study), "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]) == 2
    err = capsys.readouterr().err
    assert "search.grace_period = 16: the trials run 16 epochs" in err, err
    study.write_text(SMOKE.read_text().replace("sampler: tpe", "sampler: cmaes"))
    try:
        import cmaes  # noqa: F401
    except ImportError:
        assert main(["search", str(study), "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "search.sampler = 'cmaes'" in err and "pip install cmaes" in err, err
    assert not (tmp_path / "m.db").exists() and not (tmp_path / "m-optuna.db").exists()


def test_a_stopped_search_resumes_without_repeating_a_finished_trial(tmp_path):
    """A real `ltkd search` process with two searches (γ 10 and 20, in one Tune run) is interrupted
    (SIGINT) once two trials have finished; the rerun continues the unfinished ones and asks only for
    the rest of each budget."""
    study_file = tmp_path / "search_resume.yaml"
    study_file.write_text(SMOKE.read_text().replace("name: search_smoke", "name: search_resume")
                          .replace("gammas: [10]", "gammas: [10, 20]")
                          .replace("pruner: asha", "pruner: none").replace("trials: 8", "trials: 3"))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [str(BIN / "ltkd"), "search", str(study_file), "--tracking-uri", uri]
    COMPLETE, RUNNING = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING

    def complete_now() -> dict[tuple[int, int], float]:
        out = {}
        for i in (0, 1):
            ostudy, _ = _ostudy(tmp_path, study_file, i)
            out.update({(i, t.number): t.value for t in ostudy.trials if t.state == COMPLETE})
        return out

    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(command, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.time() + 400
    try:
        while time.time() < deadline and proc.poll() is None:
            time.sleep(1)
            if not (tmp_path / "mlflow-optuna.db").exists():
                continue
            try:
                if len(complete_now()) >= 2:
                    proc.send_signal(signal.SIGINT)
                    break
            except KeyError:
                continue  # the searches' Optuna studies are not created yet
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    first = (tmp_path / "first.log").read_text()
    assert proc.returncode == 130, first[-3000:]
    complete_before = complete_now()
    running_before = [(i, t.number) for i in (0, 1) for t in _ostudy(tmp_path, study_file, i)[0].trials if t.state == RUNNING]
    assert 2 <= len(complete_before) < 6, first[-2000:]
    # both searches were served at once: each had a trial before the interrupt
    assert {i for i, _ in complete_before} | {i for i, _ in running_before} == {0, 1}, first[-2000:]

    second = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=400)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    for i, gamma in ((0, 10), (1, 20)):
        ended = sum(1 for j, _ in complete_before if j == i)
        if ended < 3:
            assert f"search ltkd cnn_w32>cnn_w8 g{gamma}: {count(3 - ended, 'trial')} to run ({ended} ended before" in second.stdout, \
                second.stdout
        for j, number in complete_before:
            if j == i:  # never started again
                assert f"started  search ltkd cnn_w32>cnn_w8 g{gamma} #{number}\n" not in second.stdout
        for j, number in running_before:
            if j == i:  # continued with its point, not replaced by a new one
                assert f"search ltkd cnn_w32>cnn_w8 g{gamma} #{number}" in second.stdout
    _, runs = _runs(uri, "search_resume")
    for i in (0, 1):
        ostudy, target = _ostudy(tmp_path, study_file, i)
        assert sorted(t.number for t in ostudy.trials) == [0, 1, 2]
        assert all(t.state == COMPLETE for t in ostudy.trials)
        assert {(i, t.number): t.value for t in ostudy.trials if (i, t.number) in complete_before} == \
            {k: v for k, v in complete_before.items() if k[0] == i}
        numbers = [int(r.data.tags["search_trial"]) for r in runs if r.data.tags.get(SEARCH_KEY_TAG) == target.key
                   and r.data.tags.get("role") == "distill"]
        assert sorted(numbers) == [0, 1, 2]  # one run per trial: none repeated, the stopped ones continued
