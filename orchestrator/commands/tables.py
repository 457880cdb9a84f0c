"""`ltkd tables`: the study's tables and plots regenerated from what is tracked, printed, written, logged
or kept current (--watch)."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import pandas as pd

from orchestrator.commands.options import check_duration
from orchestrator.errors import UserError, describe, first_line
from orchestrator.paths import writable_folder
from orchestrator.study import expand, load_study
from orchestrator.tables import build_tables
from orchestrator.tables.console import print_tables, written_line
from orchestrator.tables.paper import render_versus_md, versus_tidy
from orchestrator.tables.regenerate import log_tables, read_finished, regenerate, write_tables
from orchestrator.tables.report import write_report
from orchestrator.tracking import Tracker, check_reachable, resolve_tracking_uri, runs_view_state


def command(args) -> int:
    """`ltkd tables`."""
    study = load_study(args.study)
    trials = expand(study)
    if args.watch and not args.out:
        raise UserError("--watch: needs --out DIR (the folder it keeps current)")
    check_duration("--every", args.every, "seconds", zero_allowed=False)
    if args.out:
        writable_folder(args.out, "--out")  # before the store is read: a bad folder is found in a second
    uri = resolve_tracking_uri(args.tracking_uri)
    check_reachable(uri)
    no_runs = UserError(f"{args.study}: no runs of study {study.name!r} to tabulate in {uri} (no FINISHED run of its trials); "
                        f"run `ltkd sweep {args.study}` first")
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).expanduser().exists():
        raise no_runs  # never create an empty store just to read it
    tracker = Tracker(uri)
    try:
        exp_id = tracker.experiment_id(study.name)
        finished = read_finished(tracker, exp_id, trials)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - any store failure here is the user's URI or server
        raise UserError(f"--tracking-uri {uri}: cannot read the tracking store ({describe(exc)})") from None
    if args.watch:
        if exp_id is None:
            raise no_runs
        return _watch_tables(args, study, trials, tracker, exp_id)
    if not finished:
        raise no_runs

    tables = build_tables(study, trials, finished)
    if args.versus == "paper":
        return _print_versus_paper(args, study, tables)
    print_tables(tables, args.format)
    if not args.out:
        return 0
    out = writable_folder(args.out, "--out")
    files, notes = write_tables(study, trials, tables, finished, tracker, out)
    files += write_report(study, trials, tables, tracker.run_states(exp_id), files, uri, exp_id, out)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    print(written_line(files, out), file=sys.stderr)
    if not args.no_log:

        tracker.describe_experiment(exp_id, study.description, runs_view_state(searched=study.search is not None))
        run_id = log_tables(tracker, exp_id, study, files, len(finished), sum(len(t.missing()) for t in tables))
        print(f"logged them to MLflow run 'tables {study.name}' ({run_id}) in experiment {study.name!r}", file=sys.stderr)
    return 0


def _print_versus_paper(args, study, tables) -> int:

    if not study.paper:
        raise UserError(f"--versus paper: study {study.name!r} has no `paper:` block (the paper's values per table and row)")
    if (args.format or "md") not in ("md", "csv"):
        raise UserError(f"--versus paper --format {args.format}: allowed: md, csv")
    chosen = [t for t in tables if t.name in study.paper]
    if args.format == "csv":
        frames = [versus_tidy(t, study) for t in chosen]
        print(pd.concat(frames).to_csv(index=False, float_format="%.6g", lineterminator="\n"), end="")
        return 0
    print("\n\n".join(render_versus_md(t, study) for t in chosen))
    return 0


def _watch_tables(args, study, trials, tracker, exp_id: str) -> int:
    """Keep --out (and, unless --no-log, the study's tables run) current until interrupted: one
    line per regeneration, when the FINISHED runs change; a store that is away is retried."""


    out = Path(args.out)
    seen: frozenset | None = None
    print(f"watching study {study.name!r} in {tracker.uri} every {args.every:g} s; Ctrl-C stops", flush=True)
    try:
        while True:
            try:
                finished = read_finished(tracker, exp_id, trials)
                state = frozenset((h, r.run_id) for h, r in finished.items())
                if finished and state != seen:
                    result = regenerate(study, trials, tracker, exp_id, out, log=not args.no_log)
                    seen = state
                    print(result.line(), flush=True)
            except Exception as exc:  # noqa: BLE001 - the store is away: say so, try again next time
                print(f"{time.strftime('%H:%M:%S')} tables not regenerated: {type(exc).__name__}: "
                      f"{first_line(exc)}; retrying", flush=True)
            time.sleep(args.every)
    except KeyboardInterrupt:
        print("stopped watching", flush=True)
        return 0

