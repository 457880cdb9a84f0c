"""Tables: tracked runs -> pandas frames -> Markdown / LaTeX / CSV / HTML."""
from orchestrator.tables.main import MISSING, cell_frame, main_table, render

__all__ = ["MISSING", "cell_frame", "main_table", "render"]
