"""`ltkd`: the one command-line entry point. Parsing and dispatch only: each verb is a module of
orchestrator.commands, imported when it runs (`ltkd --help` and `ltkd status` never load Ray)."""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from orchestrator.errors import RunFailure, UserError, first_line, redact_credentials
from orchestrator.execution.runtime_env import SHIP_MODES
from orchestrator.paths import disk_full_error, os_reason

# The output formats of `ltkd tables` (orchestrator.tables.render.FORMATS, which imports pandas: the
# parser, built on every start, names them without it; tests/test_layout.py checks the two agree).
FORMATS = ("md", "latex", "csv", "html")
# What SIGTERM stops as Ctrl-C does: the commands that run trials.
STOPPED_BY_SIGTERM = ("sweep", "search")


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad option as our one line and exit status 2."""

    def error(self, message: str):  # noqa: D401
        raise UserError(f"{self.prog}: {message}")


def _add_tracking(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ltkd", description="Sweeps, tracking and tables for long-tailed knowledge distillation.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for add in (_add_sweep, _add_search, _add_best, _add_tables, _add_report, _add_status, _add_ui, _add_train):
        add(sub)
    return parser


def _add_sweep(sub) -> None:
    p = sub.add_parser("sweep", help="validate a study, plan it (teachers first), run it on Ray, track it in MLflow")
    p.add_argument("study", help="study file (studies/*.yaml)")
    _add_tracking(p)
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and what is already done; run nothing")
    p.add_argument("--storage", help="Ray Tune storage path (shared storage on a cluster; default: a temporary folder)")
    p.add_argument("--ship", choices=SHIP_MODES,
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


def _add_search(sub) -> None:
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


def _add_best(sub) -> None:
    p = sub.add_parser("best", help="print the best point of each of the study's searches and write the file a grid study "
                                    "takes them from (methods: {METHOD: {from_search: NAME}})")
    p.add_argument("study", help="study file with a search: block")
    _add_tracking(p)
    p.add_argument("--out", metavar="FILE", help="where to write the points (default: NAME.best.yaml beside the study)")


def _add_tables(sub) -> None:
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


def _add_report(sub) -> None:
    p = sub.add_parser("report", help="one self-contained HTML page (and Markdown) with every table, plot, the plan's "
                                      "completeness per cell and links to each cell's runs")
    p.add_argument("study")
    _add_tracking(p)
    p.add_argument("--out", required=True, help="folder for STUDY_report.html, STUDY_report.md and the files they show")
    p.add_argument("--no-log", action="store_true", help="write the files only; log nothing to the study's tables run")


def _add_status(sub) -> None:
    p = sub.add_parser("status", help="done, running, failed and missing trials of a study")
    p.add_argument("study")
    _add_tracking(p)


def _add_ui(sub) -> None:
    p = sub.add_parser("ui", help="open the study's runs in the MLflow UI: starts (or reuses) one on loopback for a local store "
                                  "and prints the link to its model-training view")
    p.add_argument("study")
    _add_tracking(p)
    p.add_argument("--ui-url", help="the UI's base URL when it is served elsewhere (a proxy, a tunnel); default: $LTKD_UI_URL, "
                                    "else the tracking server, else the UI this command serves")
    p.add_argument("--no-browser", action="store_true", help="print the link only")
    p.add_argument("--stop", action="store_true", help="stop the UI this command started for the store")


def _add_train(sub) -> None:
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
    print(redact_credentials(f"ltkd: failed: {type(exc).__name__}: {first_line(exc, 500)} (LTKD_DEBUG=1 shows where; please report it if the "
                             "input was valid)"), file=sys.stderr)
    return 1


COMMANDS = ("sweep", "search", "best", "tables", "report", "status", "ui", "train")  # each: orchestrator.commands.<verb>.command


def run_command(args) -> int:
    if args.command in STOPPED_BY_SIGTERM:
        _stop_on_sigterm_as_on_ctrl_c()  # first: a SIGTERM while the command's modules import is an interrupt too (exit 143)
    module = importlib.import_module(f"orchestrator.commands.{args.command}")
    return module.command(args)


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return run_command(args)
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
