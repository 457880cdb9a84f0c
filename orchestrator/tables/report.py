"""One report per study (`ltkd report STUDY.yaml --out DIR`): a self-contained HTML page (plots
inlined) and its Markdown twin with every table, every plot, how complete the plan is per cell
(done / running / failed / missing) and, in each cell, links to its runs in the MLflow UI.
"""
from __future__ import annotations

import base64
import html
import time
from collections import Counter
from pathlib import Path

import pandas as pd

from orchestrator.errors import redact_credentials
from orchestrator.paths import file_inside, write_text
from orchestrator.tables.build import planned_by_cell, study_pairs
from orchestrator.tables.core import BEST, SECOND, Table, gamma_label, pair_label
from orchestrator.tables.plots import caption_of
from orchestrator.tables.render import render
from orchestrator.tracking.ui import expected_ui_base_url
from orchestrator.words import count

STATES = ("done", "running", "failed", "missing")


def run_link(base: str, experiment_id: str, run_id: str) -> str:
    """A run's page in the model-training view (without `workflowType` MLflow 3.17 may open GenAI's)."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"


def _state(run_states: dict, config_hash: str) -> str:
    state = run_states.get(config_hash)
    if state is None:
        return "missing"
    return {"FINISHED": "done", "RUNNING": "running", "FAILED": "failed"}.get(state.status, "missing")


def completeness(table: Table, study, trials, run_states: dict) -> pd.DataFrame | None:
    """Per cell of a main or ablation table: how many of its planned trials are done, running,
    failed or missing (KILLED counts as missing: the next sweep continues it)."""
    if table.spec.kind == "ngroups":
        return None
    planned = planned_by_cell(study, trials)
    shown = {table.spec.shown_label(label, method): label for label, method in table.spec.shown_rows(study.methods, study.student_baseline)}
    pairs = {pair_label(*p): p for p in study_pairs(study)}
    gammas = {gamma_label(g): g for g in study.dataset.gammas}
    data, rows = [], [r for r in table.rows if r in shown]
    for row in rows:
        line = []
        for col in table.cols:
            gamma = gammas[col[1]] if len(col) == 3 else study.dataset.gammas[0]
            cell_trials = planned.get((shown[row], pairs[col[0]], gamma), [])
            counts = Counter(_state(run_states, t.config_hash) for t in cell_trials)
            line.append(" · ".join(f"{counts[s]} {s}" for s in STATES if counts[s]) or "not planned")
        data.append(line)
    return pd.DataFrame(data, index=pd.Index(rows), columns=pd.MultiIndex.from_tuples(table.cols))


# The best / second-best marks, as the tables' own HTML shows them (bold, underlined).
MARKED_HTML = {BEST: "<strong>{}</strong>", SECOND: "<u>{}</u>", "": "{}"}


def _linked_cells(table: Table, base: str, experiment_id: str) -> pd.DataFrame:
    """The table's cells as HTML: the value (best bold, second underlined), then one link per seed's run."""
    data = []
    for r in table.rows:
        line = []
        for c in table.cols:
            cell = table.cells[(r, c)]
            links = "" if cell.is_delta else " ".join(
                f'<a href="{html.escape(run_link(base, experiment_id, rid))}">s{seed}</a>' for seed, rid in zip(cell.seeds, cell.run_ids))
            value = MARKED_HTML[cell.mark].format(html.escape(cell.text()))
            line.append(value + (f"<br><small>{links}</small>" if links else ""))
        data.append(line)
    # The cells are HTML already (written with escape=False); the labels come from the study (its
    # `labels:`, pair and model names) and are escaped here, so a label cannot inject markup.
    return pd.DataFrame(data, index=pd.Index([html.escape(r) for r in table.rows]),
                        columns=pd.MultiIndex.from_tuples([tuple(html.escape(str(x)) for x in c) for c in table.cols]))


def write_report(study, trials, tables: list[Table], run_states: dict, plots: list[Path], tracking_uri: str, experiment_id: str,
                 out: Path) -> list[Path]:
    """report.html (self-contained) and report.md into `out`; returns their paths."""
    base = expected_ui_base_url(tracking_uri)  # LTKD_UI_URL, the server, or what `ltkd ui` serves
    counts = Counter(_state(run_states, t.config_hash) for t in trials)
    summary = ", ".join(f"{counts[s]} {s}" for s in STATES)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    head = (f"Study {study.name!r} ({study.description or 'no description'}): {count(len(trials), 'planned trial')}: {summary}. "
            f"Generated {stamp} from {redact_credentials(tracking_uri)}.")
    parts_html = [f"<h1>{html.escape(study.name)}</h1>", f"<p>{html.escape(head)}</p>"]
    parts_md = [f"# {study.name}", "", head, ""]
    for table in tables:
        parts_html += [f"<h2>{html.escape(table.name)}</h2>", f"<p>{html.escape(table.title)}</p>",
                       _linked_cells(table, base, experiment_id).to_html(escape=False)]
        parts_md += [f"## {table.name}", "", table.title, "", render(table, "md"), ""]
        done = completeness(table, study, trials, run_states)
        if done is not None:
            parts_html += ["<h3>Completeness</h3>", done.to_html()]
            flat = done.copy()
            flat.columns = [" ".join(c) for c in done.columns]
            parts_md += ["### Completeness", "", flat.to_markdown(), ""]
        for plot in [p for p in plots if p.suffix == ".png" and p.name.startswith(f"{study.name}_{table.name}_")]:
            data = base64.b64encode(plot.read_bytes()).decode()
            caption = f"{caption_of(plot)} ({plot.name}; vector: {plot.with_suffix('.pdf').name})"
            parts_html.append(f'<figure><img alt="{html.escape(plot.name)}" src="data:image/png;base64,{data}">'
                              f"<figcaption>{html.escape(caption)}</figcaption></figure>")
            parts_md += [f"![{plot.name}]({plot.name})", "", caption, ""]
    page = ("<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>" + html.escape(f"ltkd report: {study.name}") +
            "</title><style>body{font-family:sans-serif;margin:2em} table{border-collapse:collapse;margin:1em 0} "
            "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right} img{max-width:100%}</style></head><body>"
            + "\n".join(parts_html) + "</body></html>\n")
    html_path = file_inside(out, f"{study.name}_report.html")
    md_path = file_inside(out, f"{study.name}_report.md")
    write_text(html_path, page)
    write_text(md_path, "\n".join(parts_md) + "\n")
    return [html_path, md_path]
