"""`ltkd ui STUDY`: one working link to the study's runs in the MLflow UI.

For a local store it starts (or reuses) an MLflow UI on a loopback port chosen for the store and
prints the link to the study's runs table in the model-training view, grouped by table cell; for a
server store the server is the UI. Where a browser can be shown it opens the link too.
"""
from __future__ import annotations

import os
import sys
import webbrowser

from orchestrator.commands.session import store_exists
from orchestrator.errors import UserError, describe, without_userinfo
from orchestrator.study import load_study
from orchestrator.tracking import Tracker, absolute_store_uri, check_reachable, experiment_url, resolve_tracking_uri
from orchestrator.tracking.ui import served_ui, start_ui, stop_ui, ui_base_url


def _can_show_a_browser() -> bool:
    """A desktop to open a window on: macOS and Windows always, elsewhere an X or Wayland display."""
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _experiment_id(uri: str, study_path: str, name: str) -> str:
    if not store_exists(uri):
        raise UserError(f"{study_path}: study {name!r} has no runs in {uri} (the file does not exist); "
                        f"run `ltkd sweep {study_path}` first, or give its --tracking-uri")
    try:
        exp_id = Tracker(uri).experiment_id(name)
    except Exception as exc:  # noqa: BLE001 - any store failure here is the user's URI or server
        raise UserError(f"--tracking-uri {without_userinfo(uri)}: cannot read the tracking store ({describe(exc)})") from None
    if exp_id is None:
        raise UserError(f"{study_path}: study {name!r} has no experiment in {without_userinfo(uri)}; "
                        f"run `ltkd sweep {study_path}` first, or give its --tracking-uri")
    return exp_id


def command(args) -> int:
    """`ltkd ui`."""
    study = load_study(args.study, search_results_needed=False)
    uri = absolute_store_uri(resolve_tracking_uri(args.tracking_uri))
    if args.stop:
        stopped = None if uri.startswith(("http://", "https://")) else stop_ui(uri)
        print(f"stopped the MLflow UI at {stopped.url} (pid {stopped.pid})" if stopped
              else f"no MLflow UI of ltkd's runs for {without_userinfo(uri)}")
        return 0
    check_reachable(uri)
    exp_id = _experiment_id(uri, args.study, study.name)
    base = ui_base_url(uri, args.ui_url)
    how = "served by the tracking server" if uri.startswith(("http://", "https://")) else None
    if base is None:
        served = start_ui(uri)
        base, how = served.url, f"started an MLflow UI (pid {served.pid}; `ltkd ui {args.study} --stop` stops it; log {served.log})"
    elif how is None:
        served = served_ui(uri)
        how = f"the MLflow UI already running (pid {served.pid})" if served and served.url == base else "the UI at --ui-url / LTKD_UI_URL"
    url = experiment_url(base, exp_id)
    print(f"runs of study {study.name!r}: {url}")
    print(f"  ({how})")
    if not args.no_browser and _can_show_a_browser():
        try:
            webbrowser.open(url)
        except webbrowser.Error:
            pass  # the link above is the way in; no browser is no failure
    return 0
