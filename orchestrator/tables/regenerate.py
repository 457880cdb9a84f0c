"""Tables that keep themselves current: one regeneration (read the store, build, write, log) shared
by `ltkd tables --out`, `ltkd tables --watch` and the sweep, which rebuilds them every few minutes of
new results and once when it ends. Each regeneration also writes the study's report (report.py).

A regeneration reads only final metrics through the fast reader (`final_metrics_by_hash`), writes
every format into a folder, and logs the files to the study's `tables <study>` run under `tables/`,
replacing the previous set (same file names); the run's description says when and from how many
runs. Plots read each run's per-class artifact, so the sweep's periodic refresh leaves them out and
draws them once at the end.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.paths import file_inside, write_text
from orchestrator.tables.build import build_tables
from orchestrator.tables.console import where_logged
from orchestrator.tables.render import EXTENSIONS, FORMATS, render
from orchestrator.tables.plots import write_plots
from orchestrator.tables.report import write_report
from orchestrator.words import count

# Only what tables show: final accuracies and the teacher's group probabilities.
TABLE_METRICS = [f"acc_{g}" for g in ("all", "head", "medium", "tail")] + [
    f"pg_{s}_{g}" for s in ("test", "train") for g in ("head", "medium", "tail")]
DESCRIPTION_TAG = "mlflow.note.content"


@dataclass
class Regeneration:
    tables: list
    files: list[Path] = field(default_factory=list)
    runs: int = 0  # FINISHED runs the tables were built from
    missing: int = 0  # cells short of seeds
    notes: list[str] = field(default_factory=list)
    run_id: str | None = None  # the tables run they were logged to

    def line(self) -> str:
        logged = f"; logged to run {self.run_id}" if self.run_id else ""
        return (f"{time.strftime('%H:%M:%S')} tables regenerated from {count(self.runs, 'run')} "
                f"({count(self.missing, 'cell')} short of seeds): {count(len(self.files), 'file')}{logged}")


def read_finished(tracker, exp_id: str | None, trials) -> dict:
    """config_hash -> the newest FINISHED run of each planned trial (final table metrics only)."""
    if exp_id is None:
        return {}
    planned = {t.config_hash for t in trials}
    found = tracker.final_metrics_by_hash(exp_id, TABLE_METRICS)
    return {h: r for h, r in found.items() if h in planned}


def write_tables(study, trials, tables, finished, tracker, out: Path, plots: bool = True) -> tuple[list[Path], list[str]]:
    """Every table in every format (and the plots) into `out`; returns the files and notes."""
    files: list[Path] = []
    for table in tables:
        for fmt in FORMATS:
            path = file_inside(out, f"{study.name}_{table.name}.{EXTENSIONS[fmt]}")
            text = render(table, fmt)
            write_text(path, f"{table.title}\n\n{text}\n" if fmt == "md" else text)
            files.append(path)
    notes: list[str] = []
    if plots:
        drawn, notes = write_plots(tables, study, trials, finished, tracker.read_json_artifact, out)
        files += drawn
    return files, notes


def log_tables(tracker, exp_id: str, study, files: list[Path], runs: int, missing: int) -> str:
    """The files into the study's tables run (replacing the previous set), its description updated."""
    run_id = tracker.tables_run(exp_id, study.name)
    tracker.log_files(run_id, [str(f) for f in files], "tables")
    stamp = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    tracker.set_tags(run_id, {DESCRIPTION_TAG: f"Tables of study {study.name!r}, regenerated {stamp} from "
                                               f"{count(runs, 'FINISHED run')} ({count(missing, 'cell')} short of seeds). "
                                               "Files: tables/."})
    tracker.end_run(run_id, "FINISHED")
    return run_id


def regenerate(study, trials, tracker, exp_id: str, out: Path, log: bool = True, plots: bool = True) -> Regeneration | None:
    """Read, build, write and (optionally) log the study's tables; None when no trial is FINISHED."""
    finished = read_finished(tracker, exp_id, trials)
    if not finished:
        return None
    tables = build_tables(study, trials, finished)
    files, notes = write_tables(study, trials, tables, finished, tracker, out, plots)
    files += write_report(study, trials, tables, tracker.run_states(exp_id), files, tracker.uri, exp_id, out)
    result = Regeneration(tables, files, len(finished), sum(len(t.missing()) for t in tables), notes)
    if log:
        result.run_id = log_tables(tracker, exp_id, study, files, result.runs, result.missing)
    return result


def interrupted_tables_run(tracker, exp_id: str, study: str) -> str | None:
    """The study's `tables` run when it is RUNNING: a regeneration (`log_tables`) began and its process
    died before ending it, e.g. a sweep killed while it regenerated its final tables."""
    runs = tracker.runs_tagged(exp_id, {"role": "tables"}, max_results=100, status="RUNNING")
    return next((r.info.run_id for r in runs if r.data.tags.get("study") == study), None)


def finish_interrupted_tables(study, trials, tracker, exp_id: str, out: Path, files_command: str | None = None) -> str | None:
    """Regenerate the tables into a `tables` run that a killed regeneration left RUNNING (its files may be
    half logged), so that it is FINISHED and current again. The caller holds the study's lease (no live
    sweep regenerates meanwhile). Returns the line to print, or None when nothing was left RUNNING."""
    run_id = interrupted_tables_run(tracker, exp_id, study.name)
    if run_id is None:
        return None
    out.mkdir(parents=True, exist_ok=True)
    result = regenerate(study, trials, tracker, exp_id, out, log=True)
    if result is None:  # no FINISHED trial to tabulate: nothing to regenerate into it
        tracker.end_run(run_id, "KILLED")
        return f"tables: run 'tables {study.name}' was left RUNNING by a regeneration that died; no FINISHED trial to rebuild it from (now KILLED)"
    return (f"tables: run 'tables {study.name}' was left RUNNING by a regeneration that died; regenerated from "
            f"{count(result.runs, 'run')} ({count(result.missing, 'cell')} short of seeds), {where_logged(study.name, files_command)}")


class TablesRefresher:
    """In a sweep: regenerate the study's tables every `every_s` seconds while new trials finish
    (tables only), and once more, with plots, when the sweep ends. Runs beside the sweep in a
    thread; a failure (the store away) is a note, never a failed sweep."""

    def __init__(self, study, trials, tracker, exp_id: str, out: Path, every_s: float, note, files_command: str | None = None):
        """files_command: how the user writes the tables to a folder (`where_logged`)."""
        self.study, self.trials, self.tracker, self.exp_id, self.out = study, trials, tracker, exp_id, out
        self.files_command = files_command
        self.every_s = every_s
        self.note = note
        self.finished_seen = -1
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        if self.every_s > 0 and self.study.tables:
            self._thread = threading.Thread(target=self._loop, name="ltkd-tables", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self.refresh(plots=False, only_if_new=True)

    def refresh(self, plots: bool, only_if_new: bool) -> Regeneration | None:
        with self._lock:
            try:
                if only_if_new:
                    finished_now = len(read_finished(self.tracker, self.exp_id, self.trials))
                    if finished_now == self.finished_seen:
                        return None
                result = regenerate(self.study, self.trials, self.tracker, self.exp_id, self.out, log=True, plots=plots)
            except Exception as exc:  # noqa: BLE001 - the tables wait for the next refresh
                self.note(f"tables: not regenerated this time ({type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]})")
                return None
            if result is not None:
                self.finished_seen = result.runs
                # The last regeneration (with plots) says where the tables are for the user; the periodic ones are short.
                where = where_logged(self.study.name, self.files_command) if plots else f"in MLflow run 'tables {self.study.name}'"
                self.note(f"tables: regenerated from {count(result.runs, 'run')} ({count(result.missing, 'cell')} short of "
                          f"seeds), {where}")
            return result

    def stop(self) -> None:
        """Stop the periodic refresh (a regeneration under way finishes first)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)

    def close(self) -> Regeneration | None:
        """Stop the periodic refresh and regenerate once more, plots included."""
        self.stop()
        if not self.study.tables:
            return None
        return self.refresh(plots=True, only_if_new=False)
