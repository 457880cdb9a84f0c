"""Tables: tracked runs -> pandas -> Markdown / LaTeX / CSV / HTML, and PNG plots.

core.py (cells, marks, Δ with a paired t-test) · build.py (main, ablation, ngroups) ·
render.py (md, latex, html via pandas Styler, tidy csv) · plots.py (matplotlib, Agg).
"""
from orchestrator.tables.build import build_tables
from orchestrator.tables.core import DELTA_ROW, MISSING, Cell, Table
from orchestrator.tables.render import EXTENSIONS, FORMATS, render

__all__ = ["DELTA_ROW", "EXTENSIONS", "FORMATS", "MISSING", "Cell", "Table", "build_tables", "render"]
