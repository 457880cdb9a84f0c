"""What `ltkd tables` prints, and the lines that say where the tables went.

On a terminal (stdout a TTY, no --format given) each table is drawn as a plain table: best bold, second
best underlined, a blank line before the method rows and before Δ, the caption under it. Anything else gets
the format asked for, Markdown by default, as before: scripts and tests read `ltkd tables STUDY | ...`
as Markdown (with its ** and <u> marks), and `--format md` asks for Markdown even on a terminal.
"""
from __future__ import annotations

import sys
from pathlib import Path

from orchestrator.tables.core import BEST, SECOND, Table
from orchestrator.tables.render import render, render_csv
from orchestrator.words import count

_MARK_STYLES = {BEST: "bold", SECOND: "underline", "": ""}


def _column_blocks(widths: list[int], label_width: int, total: int) -> list[list[int]]:
    """The columns in consecutive blocks that each fit `total` characters beside the row labels (as
    pandas prints a wide frame): a value is never broken over lines or cut short."""
    blocks, current, used = [], [], label_width
    for i, width in enumerate(widths):
        if current and used + width + COLUMN_GAP > total:
            blocks.append(current)
            current, used = [], label_width
        current.append(i)
        used += width + COLUMN_GAP
    return blocks + [current]


COLUMN_GAP = 3  # a column's padding (one space each side) and the space between columns


def print_terminal(table: Table, out) -> None:
    """One table for a person at a terminal, in blocks of columns that fit its width."""
    from rich import box
    from rich.console import Console
    from rich.table import Table as RichTable
    from rich.text import Text

    console = Console(file=out, highlight=False)
    text, marks = table.text(), table.marks()
    label_width = max(len(r) for r in table.rows)
    # A column is as wide as its longest value and its longest header word: headers wrap at spaces.
    widths = [max([len(t) for t in text[col]] + [len(word) for part in col for word in part.split()]) for col in table.cols]
    blocks = _column_blocks(widths, label_width, console.width)
    scope = "the n(G) values of a row and method" if table.spec.kind == "ngroups" else "the method rows of a column"
    for b, block in enumerate(blocks):
        grid = RichTable(title=f"{table.study}: {table.name}" if b == 0 else None, title_style="bold", title_justify="left",
                         box=box.SIMPLE_HEAD, header_style="bold", pad_edge=False)
        grid.add_column("", no_wrap=True, min_width=label_width)
        for i in block:
            grid.add_column("\n".join(table.cols[i]), justify="right", min_width=widths[i])
        for r, row in enumerate(table.rows):
            ruled = r + 1 < len(table.rows) and table.rows[r + 1] in table.rules_before
            # The mark styles the value only, not the padding that right-aligns it (an underline would run into it).
            cells = [Text.assemble((text.iloc[r, i], _MARK_STYLES[marks.iloc[r, i]])) for i in block]
            grid.add_row(row, *cells, end_section=ruled)
        console.print(grid)
    # The caption once, under the last block, as wide as the terminal (a block may be narrow).
    console.print(Text(f"{table.title} Bold: best; underlined: second best (among {scope}).", style="dim"))


def print_tables(tables: list[Table], fmt: str | None, out=None, err=None) -> None:
    """Every table in `fmt` (None: a plain table on a terminal, else Markdown) to `out`; to `err`, the
    cells short of seeds."""
    out, err = out or sys.stdout, err or sys.stderr
    terminal = fmt is None and out.isatty()
    fmt = fmt or "md"
    if fmt == "csv":
        # one CSV for all tables (the `table` column tells them apart), so the output can be piped
        print("".join(render_csv(t) if i == 0 else render_csv(t).split("\n", 1)[1] for i, t in enumerate(tables)), end="", file=out)
    for i, table in enumerate(tables):
        if terminal:
            if i:
                print(file=out)
            print_terminal(table, out)
        elif fmt == "md":
            print(("\n" if i else "") + f"{table.study}: {table.name} — {table.title}\n", file=out)
            print(render(table, fmt), file=out)
            print(file=out)
        elif fmt != "csv":
            print(render(table, fmt), file=out)
        gaps = table.missing()
        if gaps:
            print(f"{table.name}: {count(len(gaps), 'cell')} short of seeds (shown as – or with (n=…)):", file=err)
            for g in gaps:
                print(f"  {g}", file=err)


def written_line(files: list[Path], out: Path) -> str:
    """The line after `ltkd tables --out` wrote its files."""
    return f"wrote {count(len(files), 'file')} to {out}/: {', '.join(f.name for f in files)}"


def where_logged(study_name: str, files_command: str | None = None) -> str:
    """Where tables regenerated without --out (by a sweep) are for the user: the study's tables run in
    MLflow, or a folder of their choosing (the sweep's own copy sits in an internal folder).
    files_command: the `ltkd tables STUDY ... --out DIR` line for this study, as the user would type it."""
    return (f"in MLflow run 'tables {study_name}' (artifacts under tables/); "
            f"`{files_command or 'ltkd tables STUDY.yaml --out DIR'}` writes them to a folder")
