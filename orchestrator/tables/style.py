"""The one figure style of every plot the tables write, so that a paper can take a figure unchanged.

- Size: one column of a two-column paper, COLUMN_WIDTH_IN (3.3 in) wide, for up to two panels a row;
  PAGE_WIDTH_IN (6.9 in, both columns) for more. The figure is meant to be placed at 100 %, so the
  font sizes below are the sizes on the page: never under MIN_FONT_PT (7 pt).
- Files: vector PDF with TrueType fonts embedded (type 42: text stays text, and publishers' checks
  refuse type-3 fonts), PNG at DPI for screens and the report. Constrained layout, not a tight bounding
  box, so the saved figure has exactly the width asked for.
- Panels of one figure share their axes (same ranges, same ticks), error bars carry caps, and one
  legend for the whole figure sits above the panels, at the same place in the PNG and the PDF.
- Colours: the Okabe-Ito palette (told apart with the common colour-vision deficiencies), each line
  also with its own marker, so a greyscale print keeps them apart.

Everything is set through `paper_style()` (one rcParams context); the plot functions set no sizes of
their own.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

from cycler import cycler

COLUMN_WIDTH_IN = 3.3
PAGE_WIDTH_IN = 6.9
DPI = 200  # the PNGs; the PDFs are vector
MIN_FONT_PT = 7

# Okabe-Ito (black first: the Teacher's line), yellow left out: too faint on white.
COLORS = ("#000000", "#E69F00", "#0072B2", "#D55E00", "#009E73", "#CC79A7", "#56B4E9")
MARKERS = ("o", "s", "^", "D", "v", "P", "X")

RC = {
    "font.family": "DejaVu Sans",
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "figure.titlesize": 8,
    "figure.labelsize": 8,
    "xtick.labelsize": MIN_FONT_PT,
    "ytick.labelsize": MIN_FONT_PT,
    "legend.fontsize": MIN_FONT_PT,
    "legend.title_fontsize": MIN_FONT_PT,
    "legend.frameon": False,
    "legend.handlelength": 1.8,
    "legend.columnspacing": 1.2,
    "axes.linewidth": 0.6,
    "axes.titlepad": 3.0,
    "axes.labelpad": 2.0,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.prop_cycle": cycler(color=COLORS) + cycler(marker=MARKERS),
    "axes.grid": True,
    "grid.linewidth": 0.4,
    "grid.alpha": 0.4,
    "lines.linewidth": 1.0,
    "lines.markersize": 3.0,
    "errorbar.capsize": 2.0,
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
    "xtick.major.size": 2.5,
    "ytick.major.size": 2.5,
    "xtick.minor.size": 1.5,
    "ytick.minor.size": 1.5,
    "xtick.major.pad": 2.0,
    "ytick.major.pad": 2.0,
    "figure.constrained_layout.use": True,
    "figure.constrained_layout.h_pad": 0.02,
    "figure.constrained_layout.w_pad": 0.02,
    "savefig.dpi": DPI,
    "pdf.fonttype": 42,
    "ps.fonttype": 42,
}


@contextlib.contextmanager
def paper_style() -> Iterator[None]:
    """Draw and save inside this: figures made here take the style (sizes are read when an artist is
    made, file settings when a figure is saved)."""
    import matplotlib

    with matplotlib.rc_context(RC):
        yield


def panel_figure(n: int, row_height_in: float, sharex: bool = True):
    """A figure of `n` panels that share both axes: (figure, the n axes in reading order). Drawn with
    the object API (no pyplot state), so nothing has to be closed and no backend is chosen."""
    from matplotlib.figure import Figure

    cols = 1 if n == 1 else 2 if n <= 4 else 3
    rows = math.ceil(n / cols)
    width = COLUMN_WIDTH_IN if cols <= 2 else PAGE_WIDTH_IN
    legend_in = 0.3
    fig = Figure(figsize=(width, rows * row_height_in + legend_in), layout="constrained")
    grid = fig.subplots(rows, cols, sharex=sharex, sharey=True, squeeze=False)
    flat = [ax for row in grid for ax in row]
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def label_outer(axes: list, xlabel: str | None, ylabel: str) -> None:
    """Axis labels once: the y label on each row's first panel; the x label under the panels, once for
    the figure when they stand side by side (one under each would run into the next)."""
    for ax in axes:
        spec = ax.get_subplotspec()
        if spec.is_first_col():
            ax.set_ylabel(ylabel)
        below = [other for other in axes if other.get_subplotspec().colspan.start == spec.colspan.start
                 and other.get_subplotspec().rowspan.start > spec.rowspan.start]
        if not below:
            ax.tick_params(labelbottom=True)  # the lowest panel of its column, even above an empty slot
    if xlabel is None:  # the tick labels say it all
        return
    if len(axes) == 1 or axes[0].get_gridspec().ncols == 1:
        for ax in axes:
            if ax.get_subplotspec().is_last_row():
                ax.set_xlabel(xlabel)
    else:
        axes[0].get_figure().supxlabel(xlabel)


def panel_title(ax, text: str) -> None:
    """The panel's title, each line wrapped at spaces to the panel's width (side by side, long model
    names would otherwise run into the next panel's title)."""
    import textwrap

    fig = ax.get_figure()
    panel_in = fig.get_figwidth() / ax.get_gridspec().ncols
    chars = max(12, int(panel_in * 12.5))  # 8 pt characters per inch, about
    ax.set_title("\n".join(textwrap.fill(line, chars, break_long_words=False) for line in text.split("\n")))


def figure_legend(fig, handles: list, labels: list[str]) -> None:
    """One legend for the figure, above the panels (below them it would meet the shared x label): as many
    columns as fit the figure's width."""
    width_chars = fig.get_figwidth() * 16  # about how many 7 pt characters (and handles) fit on one line
    ncol = len(labels)
    while ncol > 1 and sum(len(lb) + 5 for lb in labels[:ncol]) > width_chars:
        ncol -= 1
    fig.legend(handles, labels, loc="outside upper center", ncol=ncol)


def save(fig, path) -> list:
    """The figure as PNG (at DPI) and vector PDF beside it; `path` names the PNG. Returns both paths."""
    paths = []
    with paper_style():
        for fmt in ("png", "pdf"):
            target = path.with_suffix("." + fmt)
            fig.savefig(target, format=fmt)
            paths.append(target)
    return paths
