"""`ltkd best`: the best point of each of a study's searches, and the file a grid study takes them from."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import yaml

from orchestrator.errors import UserError
from orchestrator.study import load_study
from orchestrator.tracking import Tracker, check_reachable, resolve_tracking_uri
from orchestrator.errors import redact_credentials
from orchestrator.commands.session import store_exists
from orchestrator.paths import write_text
from orchestrator.search.parents import find_parent, point_text, value_text
from orchestrator.search.space import targets


# ---------------------------------------------------------------------------------------------
# `ltkd best`


def command(args) -> int:
    """`ltkd best`."""
    return best_points(args.study, args.tracking_uri, args.out)


def best_points(study_path: str, tracking_uri: str | None, out_file: str | None, out=None) -> int:
    """Print the best point of each of the study's searches (from their parent runs) and write the
    file a grid study names with `methods: {<method>: {from_search: <this study's name>}}`."""
    out = out or sys.stdout
    study = load_study(study_path, search_results_needed=False)
    if study.search is None:
        raise UserError(f"{study_path}: the study has no search: block; `ltkd best` reads the searches of a study that has one")
    uri = resolve_tracking_uri(tracking_uri)
    check_reachable(uri)
    if not store_exists(uri):  # reading creates nothing
        raise UserError(f"{study_path}: no search of this study has a completed trial in {uri} (no store there); "
                        f"run `ltkd search {study_path}` first")
    tracker = Tracker(uri)
    exp_id = tracker.experiment_id(study.name, create=False)
    metric = study.search.metric
    points, missing = [], []
    for target in targets(study):
        run = find_parent(tracker, exp_id, target.key) if exp_id is not None else None
        best = json.loads(run.data.tags.get("best_params", "{}")) if run else {}
        if not best:
            missing.append(target.label)
            continue
        value = run.data.metrics.get(f"best_{metric}")
        counts = {k: int(run.data.metrics.get(f"trials_{k}", 0)) for k in ("complete", "pruned", "failed")}
        points.append({"teacher": target.pair.teacher, "student": target.pair.student, "gamma": target.gamma,
                       "params": best, metric: value, "trials": counts, "status": run.info.status, "parent_run_id": run.info.run_id})
        print(f"{target.label}: {metric} {value_text(value)} at {point_text(best)} ({counts['complete']} complete, {counts['pruned']} pruned, "
              f"{counts['failed']} failed; {run.info.status.lower()})", file=out)
    if not points:
        raise UserError(f"{study_path}: no search of this study has a completed trial in {uri}; run `ltkd search {study_path}` first")
    target_file = Path(out_file) if out_file else Path(study_path).with_name(f"{study.name}.best.yaml")
    body = {"search": study.name, "method": study.search.method, "metric": metric, "tracking_uri": redact_credentials(uri),
            "written": time.strftime("%Y-%m-%d %H:%M:%S"), "points": points}
    header = (f"# Written by `ltkd best`: the best {study.search.method} hyperparameters of study {study.name!r} per pair and γ, "
              f"chosen on {metric}\n# (a balanced validation split; no test metric was read). A grid study takes them with\n"
              f"#   methods: {{{study.search.method}: {{from_search: {study.name}}}}}\n")
    write_text(target_file, header + yaml.safe_dump(body, sort_keys=False, allow_unicode=True))
    if missing:
        print(f"no completed trial yet: {', '.join(missing)}", file=out)
    print(f"wrote {target_file}", file=out)
    return 0
