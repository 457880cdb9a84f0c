"""`ltkd`: the one command-line entry point (sweep, tables, status, train)."""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from orchestrator.errors import RunFailure, UserError, describe, redact_credentials
from orchestrator.paths import disk_full_error, os_reason, writable_folder

FORMATS = ("md", "latex", "csv", "html")
# Tune's storage URIs go through pyarrow.fs.FileSystem.from_uri: the schemes it knows ("file" included).
STORAGE_SCHEMES = ("file", "s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss")
EXTENSIONS = {"md": "md", "latex": "tex", "csv": "csv", "html": "html"}


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad option as our one line and exit status 2."""

    def error(self, message: str):  # noqa: D401
        raise UserError(f"{self.prog}: {message}")


def _add_tracking(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ltkd", description="Sweeps, tracking and tables for long-tailed knowledge distillation.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("sweep", help="validate a study, plan it (teachers first), run it on Ray, track it in MLflow")
    p.add_argument("study", help="study file (studies/*.yaml)")
    _add_tracking(p)
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and what is already done; run nothing")
    p.add_argument("--storage", help="Ray Tune storage path (shared storage on a cluster; default: a temporary folder)")
    p.add_argument("--ship", choices=("code", "deps", "none"),
                   help="with --address, what the workers get through Ray's runtime environment: code (default: the trainer "
                        "and orchestrator packages), deps (also the pinned dependencies, pip-installed once per node), none")
    p.add_argument("--outage-limit", type=float, default=30.0, metavar="MINUTES",
                   help="how long the tracking store may stay unreachable before the sweep stops (default 30; "
                        "meanwhile trials go on and their writes wait on disk)")
    p.add_argument("--retrain-teacher", action="append", default=[], metavar="HASH",
                   help="train this teacher again (its config hash, as `--dry-run` and a corrupt-checkpoint error show it): "
                        "its FINISHED run goes to the experiment's trash; repeatable")
    p.add_argument("--tables-every", type=float, default=10.0, metavar="MINUTES",
                   help="while trials finish, regenerate the study's tables into its MLflow run 'tables STUDY' this often "
                        "(default 10; 0: only when the sweep ends, which it always does)")
    p.add_argument("--wait-for-resources", type=float, default=0.0, metavar="MINUTES",
                   help="when no alive node can hold one trial (an autoscaling cluster still scaling up), wait this long "
                        "for one before refusing (default 0: refuse at once)")

    p = sub.add_parser("search", help="Optuna search over the study's `search:` block per pair and γ, on a balanced validation "
                                      "split, trials run (and early-stopped by ASHA) on Ray, nested under one MLflow run per search")
    p.add_argument("study", help="study file with a search: block")
    _add_tracking(p)
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--storage", help="Ray Tune storage path (shared storage on a cluster; default: a temporary folder)")
    p.add_argument("--optuna-storage", metavar="URI",
                   help="Optuna's storage (an SQLAlchemy URL, e.g. postgresql://…/optuna; default: a SQLite file beside a SQLite "
                        "tracking store, else ~/.cache/ltkd/optuna/)")
    p.add_argument("--outage-limit", type=float, default=30.0, metavar="MINUTES",
                   help="how long the tracking store may stay unreachable before the search stops (default 30)")

    p = sub.add_parser("best", help="print the best point of each of the study's searches and write the file a grid study "
                                    "takes them from (methods: {METHOD: {from_search: NAME}})")
    p.add_argument("study", help="study file with a search: block")
    _add_tracking(p)
    p.add_argument("--out", metavar="FILE", help="where to write the points (default: NAME.best.yaml beside the study)")

    p = sub.add_parser("tables", help="regenerate the study's tables from what is tracked")
    p.add_argument("study")
    _add_tracking(p)
    p.add_argument("--format", choices=FORMATS, help="what to print (default: a plain table on a terminal, Markdown otherwise); "
                                                    "csv prints one tidy CSV for all tables")
    p.add_argument("--out", help="also write every format and the plots (PNG) into this folder, and log them to the "
                                 "study's MLflow run 'tables <study>'")
    p.add_argument("--no-log", action="store_true", help="with --out: write the files only, log nothing to MLflow")
    p.add_argument("--versus", choices=["paper"], help="paper: each cell beside the value the study's `paper:` block gives, "
                                                       "with the difference (marked ! beyond two seed std)")
    p.add_argument("--watch", action="store_true", help="with --out: keep the tables current (and logged) as runs finish, "
                                                        "one line per regeneration, until interrupted")
    p.add_argument("--every", type=float, default=60.0, metavar="SECONDS", help="with --watch: how often to look (default 60)")

    p = sub.add_parser("report", help="one self-contained HTML page (and Markdown) with every table, plot, the plan's "
                                      "completeness per cell and links to each cell's runs")
    p.add_argument("study")
    _add_tracking(p)
    p.add_argument("--out", required=True, help="folder for STUDY_report.html, STUDY_report.md and the files they show")
    p.add_argument("--no-log", action="store_true", help="write the files only; log nothing to the study's tables run")

    p = sub.add_parser("status", help="done, running, failed and missing trials of a study")
    p.add_argument("study")
    _add_tracking(p)

    p = sub.add_parser("train", help="one trial by hand, in this process (no Ray, no tracking)")
    p.add_argument("--dataset", default="digits")
    p.add_argument("--gamma", type=float, default=10.0)
    p.add_argument("--model", default="cnn_w8")
    p.add_argument("--method", default="ce", help="ce trains a teacher/student; a distillation method needs --teacher-checkpoint")
    p.add_argument("--teacher-checkpoint", help="folder written by an earlier `ltkd train --save`")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="method hyperparameter (YAML value)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--root", help="dataset folder for on-disk datasets")
    p.add_argument("--device", default="auto")
    p.add_argument("--save", help="write the final weights into this folder")
    return parser


_SIGTERM_SEEN: list[int] = []


def _stop_on_sigterm_as_on_ctrl_c() -> None:
    """SIGTERM (`kill`, SLURM's warning before the time limit, `docker stop`, a pod's deletion) stops a
    sweep the way Ctrl-C does: Tune's SIGINT handler while trials run, else a KeyboardInterrupt."""
    import signal
    import threading

    def on_sigterm(signum, frame):
        _SIGTERM_SEEN.append(signum)
        handler = signal.getsignal(signal.SIGINT)
        if callable(handler):
            handler(signal.SIGINT, frame)
        else:  # SIGINT ignored (a background job of a script) or left to the system
            raise KeyboardInterrupt

    _SIGTERM_SEEN.clear()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_sigterm)


def cmd_sweep(args) -> int:
    _stop_on_sigterm_as_on_ctrl_c()  # first: a SIGTERM during the imports below is an interrupt too (exit 143)
    from orchestrator.sweep import run_sweep

    if args.ship:
        os.environ["LTKD_SHIP"] = args.ship  # read where Ray is joined (orchestrator.execution.runtime_env)
    _check_storage(args.storage)
    _check_duration("--outage-limit", args.outage_limit, "minutes", zero_allowed=False)
    _check_duration("--tables-every", args.tables_every, "minutes", zero_allowed=True)
    _check_duration("--wait-for-resources", args.wait_for_resources, "minutes", zero_allowed=True)
    return run_sweep(args.study, args.tracking_uri, args.address, args.dry_run, args.storage, outage_limit_s=args.outage_limit * 60,
                     resource_wait_s=args.wait_for_resources * 60, retrain_teachers=args.retrain_teacher,
                     tables_every_s=args.tables_every * 60)


def _check_storage(storage: str | None) -> None:
    """A --storage URI of a scheme Tune cannot open fails every trial's first checkpoint: refused here."""
    if not storage or "://" not in storage:
        return
    scheme = storage.split("://", 1)[0].lower()
    if scheme not in STORAGE_SCHEMES:
        raise UserError(f"--storage {storage}: unknown scheme {scheme!r}; allowed: a path, or a URI of "
                        f"{', '.join(s + '://' for s in STORAGE_SCHEMES)}")


def _check_duration(option: str, value: float, unit: str, zero_allowed: bool) -> None:
    """A waiting time: a finite number that the timers it sets can hold (threading.TIMEOUT_MAX seconds)."""
    import threading

    seconds = value * (60 if unit == "minutes" else 1)
    longest = threading.TIMEOUT_MAX / (60 if unit == "minutes" else 1)
    if not (value > 0 or (zero_allowed and value == 0)) or not math.isfinite(seconds) or seconds > threading.TIMEOUT_MAX:
        low = ">= 0" if zero_allowed else "> 0"
        raise UserError(f"{option} {value:g}: must be a number of {unit} {low} and at most {longest:.4g}")


def cmd_search(args) -> int:
    _stop_on_sigterm_as_on_ctrl_c()  # first: a SIGTERM during the imports below is an interrupt too (exit 143)
    from orchestrator.search import run_search

    _check_storage(args.storage)
    _check_duration("--outage-limit", args.outage_limit, "minutes", zero_allowed=False)
    return run_search(args.study, args.tracking_uri, args.address, args.storage, args.optuna_storage,
                      outage_limit_s=args.outage_limit * 60)


def cmd_best(args) -> int:
    from orchestrator.search import best_points

    return best_points(args.study, args.tracking_uri, args.out)


def cmd_tables(args) -> int:
    from orchestrator.study import expand, load_study
    from orchestrator.paths import writable_folder
    from orchestrator.tables.console import print_tables, written_line
    from orchestrator.tables.regenerate import log_tables, read_finished, write_tables
    from orchestrator.tables.report import write_report
    from orchestrator.tracking import Tracker, check_reachable, resolve_tracking_uri

    study = load_study(args.study)
    trials = expand(study)
    if args.watch and not args.out:
        raise UserError("--watch: needs --out DIR (the folder it keeps current)")
    _check_duration("--every", args.every, "seconds", zero_allowed=False)
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
    from orchestrator.tables import build_tables

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
        from orchestrator.tracking import runs_view_state

        tracker.describe_experiment(exp_id, study.description, runs_view_state())
        run_id = log_tables(tracker, exp_id, study, files, len(finished), sum(len(t.missing()) for t in tables))
        print(f"logged them to MLflow run 'tables {study.name}' ({run_id}) in experiment {study.name!r}", file=sys.stderr)
    return 0


def _print_versus_paper(args, study, tables) -> int:
    from orchestrator.tables.paper import render_versus_md, versus_tidy

    if not study.paper:
        raise UserError(f"--versus paper: study {study.name!r} has no `paper:` block (the paper's values per table and row)")
    if (args.format or "md") not in ("md", "csv"):
        raise UserError(f"--versus paper --format {args.format}: allowed: md, csv")
    chosen = [t for t in tables if t.name in study.paper]
    if args.format == "csv":
        frames = [versus_tidy(t, study) for t in chosen]
        print(__import__("pandas").concat(frames).to_csv(index=False, float_format="%.6g", lineterminator="\n"), end="")
        return 0
    print("\n\n".join(render_versus_md(t, study) for t in chosen))
    return 0


def _watch_tables(args, study, trials, tracker, exp_id: str) -> int:
    """Keep --out (and, unless --no-log, the study's tables run) current until interrupted: one
    line per regeneration, when the FINISHED runs change; a store that is away is retried."""
    import time

    from orchestrator.tables.regenerate import read_finished, regenerate

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
                      f"{(str(exc).splitlines() or [''])[0][:200]}; retrying", flush=True)
            time.sleep(args.every)
    except KeyboardInterrupt:
        print("stopped watching", flush=True)
        return 0


def cmd_report(args) -> int:
    from orchestrator.paths import writable_folder
    from orchestrator.study import expand, load_study
    from orchestrator.tables.core import count
    from orchestrator.tables.regenerate import regenerate
    from orchestrator.tracking import Tracker, check_reachable, resolve_tracking_uri

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


def cmd_status(args) -> int:
    from orchestrator.status import show_status

    return show_status(args.study, args.tracking_uri)


def cmd_train(args) -> int:
    import yaml

    from trainer.config import Recipe, TrialConfig
    from trainer.loop import run_trial

    params = {}
    for item in args.param:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"--param {item!r}: expected KEY=VALUE")
        params[key] = yaml.safe_load(value)
    from trainer.methods import METHODS

    needs_teacher = args.method in METHODS and METHODS[args.method].needs_teacher
    role = "distill" if needs_teacher else "student"
    if needs_teacher and not args.teacher_checkpoint:
        raise UserError(f"--method {args.method}: needs --teacher-checkpoint (a folder saved by `ltkd train --save`)")
    config = TrialConfig(role=role, dataset=args.dataset, gamma=args.gamma, model=args.model, seed=args.seed,
                         method=args.method, method_params=params, recipe=Recipe(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size),
                         data_root=args.root, device=args.device)
    _check_train_config(config)
    _check_train_paths(args, config)

    def report(ep) -> None:
        accuracy = f"  all {ep.eval.acc_all:5.1f}  tail {ep.eval.acc_tail:5.1f}" if ep.eval else ""
        print(f"epoch {ep.epoch:3d}  loss {ep.loss:.4f}{accuracy}", flush=True)

    result = run_trial(config, report=report, teacher_checkpoint=args.teacher_checkpoint, checkpoint_dir=args.save)
    print(json.dumps({"final": result.final.metrics(), "best_epoch": result.best_epoch, "best": result.best.metrics()}, indent=1))
    return 0


def _check_train_config(config) -> None:
    from trainer.datasets import DATASETS
    from trainer.methods import METHODS
    from trainer.models import MODELS

    if config.dataset not in DATASETS:
        raise UserError(f"--dataset {config.dataset}: unknown; allowed: {', '.join(sorted(DATASETS))}")
    if config.model not in MODELS:
        raise UserError(f"--model {config.model}: unknown; allowed: {', '.join(sorted(MODELS))}")
    if config.method not in METHODS:
        raise UserError(f"--method {config.method}: unknown; allowed: {', '.join(sorted(METHODS))}")
    if not (config.gamma >= 1 and math.isfinite(config.gamma)):
        raise UserError(f"--gamma {config.gamma:g}: the imbalance factor must be a finite number >= 1")
    recipe = config.recipe
    for option, value in (("--epochs", recipe.epochs), ("--batch-size", recipe.batch_size)):
        if value < 1:
            raise UserError(f"{option} {value}: must be >= 1")
    if not (recipe.lr > 0 and math.isfinite(recipe.lr)):
        raise UserError(f"--lr {recipe.lr:g}: the learning rate must be a finite number > 0")
    if not 0 <= config.seed < 2**32:
        raise UserError(f"--seed {config.seed}: must be between 0 and 2**32 - 1")
    _check_device(config.device)
    from orchestrator.study import check_param
    from trainer.datasets import num_classes_of

    allowed = METHODS[config.method].params
    for key, value in config.method_params.items():
        if key not in allowed:
            raise UserError(f"--param {key}: unknown hyperparameter of {config.method}; allowed: {', '.join(allowed) or 'none'}")
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"--param {key}={value}: NaN or infinite numbers are not allowed")
        check_param(f"--param {key}", key, value, allowed[key], num_classes_of(config.dataset))


def _check_device(name: str) -> None:
    import torch

    if name in ("auto", "cpu"):
        return
    kind, _, index = name.partition(":")
    if kind not in ("cuda", "mps") or (index and not index.isdigit()):
        raise UserError(f"--device {name}: allowed: auto, cpu, cuda, cuda:N, mps")
    if kind == "cuda" and (not torch.cuda.is_available() or int(index or 0) >= torch.cuda.device_count()):
        raise UserError(f"--device {name}: PyTorch sees {torch.cuda.device_count() if torch.cuda.is_available() else 'no'} CUDA "
                        "device(s) here; use --device auto or cpu")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {name}: no MPS device here; use --device auto or cpu")


def _check_train_paths(args, config) -> None:
    """The data, the teacher and the output folder, before any training."""
    from trainer.datasets import load_dataset
    from trainer.loop import CHECKPOINT_FILE

    if args.teacher_checkpoint:
        file = os.path.join(args.teacher_checkpoint, CHECKPOINT_FILE) if os.path.isdir(args.teacher_checkpoint) else args.teacher_checkpoint
        if not os.path.isfile(file):
            raise UserError(f"--teacher-checkpoint {args.teacher_checkpoint}: no {CHECKPOINT_FILE} there (save one with `ltkd train --save DIR`)")
    if args.save:
        writable_folder(args.save, "--save")
    if args.teacher_checkpoint and args.save:
        teacher_file = os.path.realpath(file)
        if os.path.realpath(os.path.join(args.save, CHECKPOINT_FILE)) == teacher_file:
            raise UserError(f"--save {args.save}: holds the --teacher-checkpoint's {CHECKPOINT_FILE}; the student's weights would "
                            "overwrite the teacher's: save into another folder")
    if args.teacher_checkpoint:
        _check_teacher_fits(args.teacher_checkpoint, file, config)
    try:
        load_dataset(config.dataset, root=config.data_root)
    except (FileNotFoundError, RuntimeError, ValueError) as exc:
        raise UserError(f"--dataset {config.dataset}: {(str(exc).splitlines() or [type(exc).__name__])[0]}") from None


def _check_teacher_fits(option_value: str, file: str, config) -> None:
    """The teacher checkpoint is readable and was trained on as many classes and input channels as
    the dataset has: a mismatch would fail as a tensor-size error on the first batch."""
    import torch

    from trainer.datasets import DATASET_INFO, num_classes_of

    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
        model, classes, channels = state["model"], int(state["num_classes"]), int(state["in_channels"])
    except Exception as exc:  # noqa: BLE001 - not a checkpoint of `ltkd train --save`, whatever the reason
        raise UserError(f"--teacher-checkpoint {option_value}: not a checkpoint written by `ltkd train --save` "
                        f"({type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:120]})") from None
    want = (num_classes_of(config.dataset), DATASET_INFO[config.dataset].in_channels)
    if (classes, channels) != want:
        raise UserError(f"--teacher-checkpoint {option_value}: its {model} has {classes} classes and {channels} input channel(s); "
                        f"--dataset {config.dataset} has {want[0]} and {want[1]}: give a teacher trained on {config.dataset}")


def _disk_full(exc: OSError) -> int:
    where = f" writing {exc.filename}" if exc.filename else ""
    print(f"ltkd: failed: {os_reason(exc)}{where}: free space there (or point --out/--storage elsewhere) and run the same "
          "command again; what is already tracked is kept", file=sys.stderr)
    return 1


def _unexpected(exc: BaseException) -> int:
    """A failure no check foresaw: its own one line, and the traceback only when asked for."""
    if os.environ.get("LTKD_DEBUG"):
        import traceback

        traceback.print_exception(exc)
    first = (str(exc).strip().splitlines() or [""])[0][:500]
    print(redact_credentials(f"ltkd: failed: {type(exc).__name__}: {first} (LTKD_DEBUG=1 shows where; please report it if the "
                             "input was valid)"), file=sys.stderr)
    return 1


COMMANDS = {"sweep": cmd_sweep, "search": cmd_search, "best": cmd_best, "tables": cmd_tables, "report": cmd_report, "status": cmd_status, "train": cmd_train}


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except UserError as exc:
        print(redact_credentials(f"ltkd: error: {exc}"), file=sys.stderr)
        return 2
    except RunFailure as exc:
        print(redact_credentials(f"ltkd: failed: {exc}"), file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader went away (`ltkd sweep --dry-run | head`): stop quietly, like other Unix tools.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt as exc:
        how = "interrupted (SIGTERM)" if _SIGTERM_SEEN else "interrupted"
        # A command stopped before trials ran says so in the interrupt it raises (`sweep`: a replay, a dry run).
        what = str(exc) or ("runs in flight were marked KILLED; run the same command again to go on "
                            "(finished trials are skipped, trials with checkpoint_every resume from their last state)")
        print(f"ltkd: {how}: {what}", file=sys.stderr)
        return 143 if _SIGTERM_SEEN else 130
    except Exception as exc:  # noqa: BLE001 - the last resort: one line, the traceback on request
        full = disk_full_error(exc)
        return _unexpected(exc) if full is None else _disk_full(full)
    finally:
        if argv is None and sys.argv[1:2] in (["status"], ["tables"]):  # run as the program: it ends next
            import gc

            # Keep the interpreter's last garbage collections from walking the objects of the ~3,000
            # modules MLflow imports (about 0.6 s of a reading command); exit handlers still run.
            gc.freeze()


if __name__ == "__main__":
    sys.exit(main())
