"""`ltkd report`: the study's HTML report (tables, plots, what is missing) written into a folder."""
from __future__ import annotations

import sys
from pathlib import Path

from orchestrator.errors import UserError
from orchestrator.paths import writable_folder
from orchestrator.study import expand, load_study
from orchestrator.tables.regenerate import regenerate
from orchestrator.tracking import Tracker, check_reachable, resolve_tracking_uri
from orchestrator.words import count


def command(args) -> int:
    """`ltkd report`."""
    study = load_study(args.study)
    trials = expand(study)
    out = writable_folder(args.out, "--out")
    uri = resolve_tracking_uri(args.tracking_uri)
    check_reachable(uri)
    no_runs = UserError(f"{args.study}: no runs of study {study.name!r} to report in {uri}; run `ltkd sweep {args.study}` first")
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).expanduser().exists():
        raise no_runs
    tracker = Tracker(uri)
    exp_id = tracker.experiment_id(study.name)
    result = regenerate(study, trials, tracker, exp_id, out, log=not args.no_log) if exp_id is not None else None
    if result is None:
        raise no_runs
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"wrote {out / (study.name + '_report.html')} and {count(len(result.files) - 1, 'more file')} "
          f"({count(result.runs, 'FINISHED run')}, {count(result.missing, 'cell')} short of seeds)"
          + (f"; logged to run 'tables {study.name}' ({result.run_id})" if result.run_id else ""))
    return 0

