"""Tables as data: cells over seeds, best / second-best marks, and Δ with a paired t-test.

A cell holds the final metric of each seed's FINISHED run of the trials the study plans for it
(found by config_hash, never by parsing params), and shows mean ± sample std (ddof = 1). A cell
with fewer seeds than planned says how many it has; one with none shows MISSING.

Marks: among the method rows of one column (main, ablation) or among the n(G) values of one row and
block (ngroups), the highest mean is best (bold) and the next highest second (underlined). Means are
compared as shown (two decimals), so values that print the same are tied and all get the mark.
Teacher, Student and Δ rows are never marked.

Δ (main, ablation): the reference row (LTKD) minus the best other method row of the column (the
highest mean; on a tie the row with more seeds, then the first), or minus the best of the rows the
table names (`delta: {row, versus}`, one Δ row per entry), as the difference of the two cells'
means; the paired t-test (as scipy.stats.ttest_rel) compares the two rows' runs matched by seed (two
or more needed), and † marks p < 0.05. The Δ cell's n counts the matched seeds.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from orchestrator.study import DELTA_LABEL, TableSpec
from orchestrator.words import count

MISSING = "–"
DELTA_ROW = DELTA_LABEL
DAGGER = "†"
SIGNIFICANCE = 0.05
GROUP_COLUMNS = (("Tail", "acc_tail"), ("All", "acc_all"))
METRIC_NAMES = {"acc_tail": "Tail", "acc_all": "All", "acc_head": "Head", "acc_medium": "Medium"}
BEST, SECOND = "best", "second"
DECIMALS = 2

TIDY_COLUMNS = ["table", "kind", "row", "pair", "gamma", "group", "n_groups", "metric", "mean", "std", "n",
                "expected", "seeds", "run_ids", "p_value", "versus", "mark"]


def pair_label(teacher: str, student: str) -> str:
    return f"{teacher}→{student}"


def gamma_label(gamma: float) -> str:
    return f"γ={gamma:g}"


# What a paper writes for a model family (the zoo's names are lower case identifiers); the model
# registry has no display names, so the rest of the name is made readable by rule (`model_display`).
_MODEL_FAMILIES = {"resnet": "ResNet", "wrn": "WRN", "vgg": "VGG", "mobilenet": "MobileNet",
                   "shufflenet": "ShuffleNet", "cnn": "CNN"}
# How papers name the datasets; a long-tailed cut of one is "<name>-LT" (ImageNet-LT is one already).
_DATASET_NAMES = {"digits": "Digits", "cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "tinyimagenet": "TinyImageNet",
                  "imagenet": "ImageNet", "imagenet_lt": "ImageNet-LT", "fashion_mnist": "Fashion-MNIST",
                  "synthetic": "Synthetic"}


def model_display(name: str) -> str:
    """A zoo name as papers write it: resnet32x4 -> ResNet32×4, wrn_40_2 -> WRN-40-2, mobilenet_v2 ->
    MobileNetV2, cnn_w32 -> CNN-w32; a name of no known family is shown as it is."""
    import re

    family = next((f for f in sorted(_MODEL_FAMILIES, key=len, reverse=True) if name.startswith(f)), None)
    if family is None:
        return name
    rest = re.sub(r"(?<=\d)x(?=\d)", "×", name[len(family):])
    rest = re.sub(r"_v(\d)", r"V\1", rest).replace("_", "-")
    return _MODEL_FAMILIES[family] + rest


def pair_display(label: str) -> str:
    """A pair label (teacher→student, as the tables key their columns) with both models' display names."""
    teacher, sep, student = label.partition("→")
    return f"{model_display(teacher)} → {model_display(student)}" if sep else label


def dataset_display(name: str) -> str:
    """The long-tailed dataset as papers name it: cifar100 -> CIFAR-100-LT, imagenet_lt -> ImageNet-LT."""
    shown = _DATASET_NAMES.get(name, name.replace("_", " "))
    return shown if shown.endswith("-LT") else f"{shown}-LT"


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _std(values: list[float]) -> float:
    if len(values) < 2:
        return math.nan
    m = _mean(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


@dataclass
class Cell:
    """One table cell: a metric over seeds (or, for Δ, paired differences)."""

    row: str  # shown row label
    col: tuple[str, ...]  # shown column key
    values: dict[int, float]  # seed -> final metric (Δ: seed -> paired difference)
    expected: int  # planned seeds
    run_ids: list[str]
    info: dict  # tidy fields: row, pair, gamma, group, n_groups, metric
    rankable: bool = False
    mark: str = ""
    delta: float | None = None  # Δ cells: reference mean minus the best other row's mean
    p_value: float = math.nan
    versus: str = ""  # Δ cells: the row compared against
    is_delta: bool = False

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def seeds(self) -> list[int]:
        return sorted(self.values)

    @property
    def mean(self) -> float:
        if self.delta is not None:
            return self.delta
        return _mean([self.values[s] for s in self.seeds])

    @property
    def std(self) -> float:
        return _std([self.values[s] for s in self.seeds])

    def text(self) -> str:
        """The cell as shown (marks are added per format by the renderers)."""
        if self.is_delta:
            if self.delta is None:
                return MISSING
            text = f"{self.delta:+.{DECIMALS}f}"
            if not math.isnan(self.p_value) and self.p_value < SIGNIFICANCE:
                text += DAGGER
        else:
            if self.n == 0:
                return MISSING
            text = f"{self.mean:.{DECIMALS}f}" if self.n < 2 else f"{self.mean:.{DECIMALS}f} ± {self.std:.{DECIMALS}f}"
        if 0 < self.n < self.expected:
            text += f" (n={self.n})"
        return text


@dataclass
class Table:
    spec: TableSpec
    study: str
    title: str
    rows: list[str]
    cols: list[tuple[str, ...]]
    cells: dict[tuple[str, tuple[str, ...]], Cell]
    rules_before: list[str] = field(default_factory=list)  # rows preceded by a horizontal rule
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.spec.name or self.spec.kind

    def cell(self, row: str, col: tuple[str, ...]) -> Cell:
        return self.cells[(row, col)]

    def text(self) -> pd.DataFrame:
        """Wide frame of the cells' text: index = rows, columns = a MultiIndex of the column keys."""
        data = [[self.cells[(r, c)].text() for c in self.cols] for r in self.rows]
        return pd.DataFrame(data, index=pd.Index(self.rows), columns=pd.MultiIndex.from_tuples(self.cols))

    def marks(self) -> pd.DataFrame:
        data = [[self.cells[(r, c)].mark for c in self.cols] for r in self.rows]
        return pd.DataFrame(data, index=pd.Index(self.rows), columns=pd.MultiIndex.from_tuples(self.cols))

    def frame(self) -> pd.DataFrame:
        """Tidy frame, one row per cell (the CSV)."""
        records = []
        for r in self.rows:
            for c in self.cols:
                cell = self.cells[(r, c)]
                records.append({
                    "table": self.name, "kind": self.spec.kind, **cell.info,
                    "mean": cell.mean if (cell.n or cell.delta is not None) else math.nan,
                    "std": cell.std, "n": cell.n, "expected": cell.expected,
                    "seeds": " ".join(str(s) for s in cell.seeds), "run_ids": " ".join(cell.run_ids),
                    "p_value": cell.p_value, "versus": cell.versus, "mark": cell.mark,
                })
        return pd.DataFrame.from_records(records, columns=TIDY_COLUMNS)

    def missing(self) -> list[str]:
        """One line per planned cell that has fewer seeds than planned (Tail and All counted once)."""
        lines: dict[str, None] = {}
        for r in self.rows:
            for c in self.cols:
                cell = self.cells[(r, c)]
                if not cell.is_delta and cell.n < cell.expected:
                    info = cell.info
                    where = [info["row"], info["pair"], gamma_label(info["gamma"])]
                    if info.get("n_groups") is not None:
                        where.append(f"n(G)={info['n_groups']}")
                    lines[f"{' / '.join(where)}: {cell.n} of {count(cell.expected, 'seed')}"] = None
        return list(lines)


def mark_best(cells: list[Cell]) -> None:
    """Bold the highest, underline the second highest shown value; ties share the mark."""
    present = [c for c in cells if c.n > 0]
    if len(present) < 2:
        return
    shown = sorted({round(c.mean, DECIMALS) for c in present}, reverse=True)
    for c in present:
        v = round(c.mean, DECIMALS)
        if v == shown[0]:
            c.mark = BEST
        elif len(shown) > 1 and v == shown[1]:
            c.mark = SECOND


def paired_t_pvalue(diffs: list[float]) -> float:
    """Two-sided p-value of the paired t-test on these differences, as scipy.stats.ttest_rel gives it
    (0 for constant non-zero differences, nan for none at all). Through scipy.special: importing
    scipy.stats costs `ltkd tables` half a second."""
    from scipy.special import stdtr

    n = len(diffs)
    mean = sum(diffs) / n
    var = sum((d - mean) ** 2 for d in diffs) / (n - 1)
    if var == 0:
        return 0.0 if mean != 0 else math.nan
    t = mean / math.sqrt(var / n)
    return float(2 * stdtr(n - 1, -abs(t)))


def delta_cell(ref: Cell, others: list[Cell], col: tuple[str, ...], info: dict, label: str = DELTA_ROW) -> Cell:
    """Δ = ref − the best of `others` with a paired t-test over the matched seeds (row `label`)."""
    present = [c for c in others if c.n > 0]
    if ref.n == 0 or not present:
        return Cell(label, col, {}, ref.expected, [], {**info, "row": label}, is_delta=True)
    # the highest mean; on a tie the row with more seeds (a better-supported comparison), then the first
    best = max(present, key=lambda c: (c.mean, c.n))
    seeds = [s for s in ref.seeds if s in best.values]
    diffs = {s: ref.values[s] - best.values[s] for s in seeds}
    p = paired_t_pvalue(list(diffs.values())) if len(seeds) >= 2 else math.nan
    return Cell(label, col, diffs, ref.expected, ref.run_ids + best.run_ids,
                {**info, "row": label}, delta=ref.mean - best.mean, p_value=p, versus=best.row, is_delta=True)
