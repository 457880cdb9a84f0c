"""The study file's schema: every field, its type and allowed values, checked with one clear line per problem."""
from __future__ import annotations

import dataclasses
import math
import os
import re
import struct
import typing
from typing import Any, Literal

from pydantic import AfterValidator, PrivateAttr, BaseModel, StrictInt, ConfigDict, Field, ValidationError, ValidationInfo, create_model, field_validator, model_validator

from orchestrator.errors import UserError
from trainer.config import Recipe
from trainer.recipes import RECIPES
from trainer.datasets import data_path_of, DATASET_INFO, class_counts_of, long_tailed_counts, num_classes_of
from trainer.methods import METHODS, PARAM_CHOICES
from trainer.models import MODELS
from orchestrator.study.rows import FROM_SEARCH, _as_type_of, _fmt, gamma_text, method_rows


# Unknown keys refused; no NaN or infinity, not even as a quoted 'nan' / 'inf' that pydantic would read as one.
_STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)
MAX_NAME_CHARS = 100
# A file name's limit on common filesystems (NAME_MAX, in bytes), and the longest suffix the tables
# add to `STUDY_TABLE` (orchestrator.tables.plots' teacher-probability plot): the study and table
# names must leave room for it.
MAX_FILE_NAME_BYTES = 255
LONGEST_TABLE_FILE_SUFFIX = "_teacher_group_prob.png"
# MLflow keeps at most 20,000 characters in an experiment tag; the sweep adds a link to the description.
MAX_DESCRIPTION_CHARS = 19_000
INT64_MAX = 2**63 - 1
# Ray counts resources in steps of 0.0001; a trial is a process: at least a hundredth of a CPU (or GPU).
RESOURCE_STEP = 0.0001
MIN_RESOURCE_SHARE = 0.01


def env_limit(name: str, default: int) -> int:
    """A limit on what a study file may ask for, refused with one line before anything grows; each can
    be raised through its environment variable by a user who really needs more."""
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = int(raw.strip().replace("_", ""))
    except ValueError:
        value = 0
    if value < 1:
        raise UserError(f"{name} = {raw!r}: must be a whole number >= 1 (default {default:,})")
    return value


def max_study_bytes() -> int:
    return env_limit("LTKD_MAX_STUDY_BYTES", 1_000_000)


def max_yaml_nodes() -> int:
    return env_limit("LTKD_MAX_YAML_NODES", 100_000)  # counted with every alias expanded


def max_trials() -> int:
    return env_limit("LTKD_MAX_TRIALS", 100_000)


def float32_problem(value: float) -> str | None:
    """Why a number cannot be used as the float32 training computes in (None: it can)."""
    try:
        rounded = struct.unpack("f", struct.pack("f", value))[0]
    except OverflowError:
        rounded = math.inf
    if math.isinf(rounded) and not math.isinf(value):
        return "beyond the float32 range training computes in (about ±3.4e38)"
    if value != 0 and rounded == 0:
        return "so small that it is 0 in the float32 training computes in"
    return None


def int64_problem(value: int) -> str | None:
    if not -INT64_MAX - 1 <= value <= INT64_MAX:
        return f"beyond the 64-bit integers training counts in (at most {INT64_MAX})"
    return None

# The recipe's schema is derived from the trainer's dataclass, so the two cannot drift apart:
# every field is optional (None = the preset's value), plus `preset`, a name from trainer.recipes.
_recipe_hints = typing.get_type_hints(Recipe)
_RecipeFields = create_model(
    "_RecipeFields",
    __config__=_STRICT,
    **{f.name: (_recipe_hints[f.name] | None, None) for f in dataclasses.fields(Recipe)},
)


_RECIPE_FLOATS = [name for name, hint in _recipe_hints.items() if hint is float]
_RECIPE_INTS = [name for name, hint in _recipe_hints.items() if hint is int]


class RecipeSpec(_RecipeFields):  # type: ignore[misc, valid-type]
    preset: str | None = None

    @field_validator(*_RECIPE_FLOATS)
    @classmethod
    def _float32(cls, v: float | None) -> float | None:
        problem = None if v is None else float32_problem(v)
        if problem:
            raise ValueError(problem)
        return v

    @field_validator(*_RECIPE_INTS)
    @classmethod
    def _int64(cls, v: int | None) -> int | None:
        problem = None if v is None else int64_problem(v)
        if problem:
            raise ValueError(problem)
        return v

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, v: str | None) -> str | None:
        if v is not None and v not in RECIPES:
            raise ValueError(f"unknown recipe preset; allowed: {', '.join(sorted(RECIPES))}")
        return v

    @field_validator("epochs", "batch_size", "eval_every")
    @classmethod
    def _positive(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError("must be >= 1")
        return v

    @field_validator("checkpoint_every", "warmup_epochs", "num_workers")
    @classmethod
    def _count(cls, v: int | None) -> int | None:
        if v is not None and v < 0:
            raise ValueError("must be >= 0")
        return v

    @field_validator("lr", "weight_decay", "momentum", "lr_decay")
    @classmethod
    def _non_negative(cls, v: float | None) -> float | None:
        if v is not None and v < 0:
            raise ValueError("must be >= 0")
        return v

    @field_validator("milestones")
    @classmethod
    def _increasing_epochs(cls, v: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if v is not None and (any(m < 1 for m in v) or list(v) != sorted(set(v))):
            raise ValueError("milestones must be epochs >= 1 in increasing order")
        if v is not None and any(int64_problem(m) for m in v):
            raise ValueError(int64_problem(max(v)))
        return v

    def overrides(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump(exclude={"preset"}).items() if v is not None}


class TeacherRecipeSpec(RecipeSpec):
    """teacher_recipe: the recipe's fields for teacher trials, validated and coerced as `recipe`'s are
    (the preset is the study's own)."""

    @field_validator("preset")
    @classmethod
    def _no_preset(cls, v: str | None) -> str | None:
        if v is not None:
            raise ValueError("the teacher trials take the study's recipe.preset; teacher_recipe overrides its fields")
        return v


class DatasetSpec(BaseModel):
    model_config = _STRICT
    name: str
    gammas: list[float] = Field(min_length=1)
    root: str | None = None
    options: dict[str, Any] = {}
    n_max: int | None = Field(default=None, ge=1, le=INT64_MAX)
    split_seed: int = Field(default=0, ge=0, lt=2**32)  # seeds NumPy's generator of the long-tailed draw

    @field_validator("name")
    @classmethod
    def _known_dataset(cls, v: str) -> str:
        if v not in DATASET_INFO:
            raise ValueError(f"unknown dataset; allowed: {', '.join(sorted(DATASET_INFO))}")
        return v

    @field_validator("gammas")
    @classmethod
    def _gamma_at_least_one(cls, v: list[float]) -> list[float]:
        for g in v:
            if not math.isfinite(g) or g < 1:
                raise ValueError(f"gamma = {g:g} is not allowed: the imbalance factor must be >= 1")
        # Tables, run names and the plan show γ as `gamma_text(g)`: two values shown alike would be one column.
        shown = [gamma_text(g) for g in v]
        for i, label in enumerate(shown):
            if shown.index(label) != i:
                raise ValueError(f"gamma values {v[shown.index(label)]!r} and {v[i]!r} both show as {label!r} (in tables and "
                                 "run names); give distinct values, at most 6 significant digits")
        return v

    @model_validator(mode="after")
    def _profile_fits(self) -> "DatasetSpec":
        check_profile(self, validation_per_class=0)
        return self


def check_profile(ds: "DatasetSpec", validation_per_class: int) -> None:
    """The long-tailed profile of every γ against the images each class has (where the source fixes
    them: `trainer.datasets.class_counts_of`), less the validation images a search holds out."""
    counts = class_counts_of(ds.name, ds.options)
    if counts is None:
        return
    available = [c - validation_per_class for c in counts]
    top = ds.n_max if ds.n_max is not None else min(available)
    held = f" after the {validation_per_class} validation images per class a search holds out" if validation_per_class else ""
    if top < 1:
        raise ValueError(f"{ds.name} has {min(counts)} training images in its smallest class{held}: none left to train on")
    for gamma in ds.gammas:
        profile = long_tailed_counts(top, len(counts), gamma)
        short = [i for i, (want, have) in enumerate(zip(profile, available)) if want > have]
        if short:
            i = short[0]
            fits = _largest_fitting_n_max(available, gamma)
            raise ValueError(f"n_max = {top}: at γ = {gamma_text(gamma)} class {i} of {ds.name} needs {profile[i]} training images "
                             f"and has {available[i]}{held}; allowed: n_max up to {fits}")


def _largest_fitting_n_max(available: list[int], gamma: float) -> int:
    """The largest n_max whose profile at `gamma` every class can fill (the profile grows with n_max)."""
    low, high = 0, available[0]
    while low < high:
        mid = (low + high + 1) // 2
        if all(w <= h for w, h in zip(long_tailed_counts(mid, len(available), gamma), available)):
            low = mid
        else:
            high = mid - 1
    return low


class PairSpec(BaseModel):
    model_config = _STRICT
    teacher: str
    student: str

    @field_validator("teacher", "student")
    @classmethod
    def _known_model(cls, v: str) -> str:
        if v not in MODELS:
            raise ValueError(f"unknown model; allowed: {', '.join(sorted(MODELS))}")
        return v


class ResourcesSpec(BaseModel):
    model_config = _STRICT
    cpu: float = Field(default=1, gt=0)
    gpu: float = Field(default=0, ge=0)
    # A trial whose worker or node dies is run again (resuming) up to this many times.
    max_retries: int = Field(default=2, ge=0, le=100)

    @field_validator("cpu", "gpu")
    @classmethod
    def _ray_share(cls, v: float, info: ValidationInfo) -> float:
        """What Ray can schedule: a whole number, or a fraction of one in its steps of 0.0001, and a
        trial's process takes at least a hundredth of one (GPU 0: none)."""
        if info.field_name == "gpu" and v == 0:
            return v
        allowed = (f"allowed: a whole number, or a fraction from {MIN_RESOURCE_SHARE:g} to 1 in steps of {RESOURCE_STEP:g}"
                   + (", or 0" if info.field_name == "gpu" else ""))
        steps = v / RESOURCE_STEP
        if v < MIN_RESOURCE_SHARE or (v > 1 and not v.is_integer()) or abs(steps - round(steps)) > 1e-6 or v > 1e6:
            raise ValueError(allowed)
        return v


BEST_OTHER = "best_other"
DELTA_LABEL = "Δ"  # the label of a table's Δ row (tables.core.DELTA_ROW is this)


class DeltaSpec(BaseModel):
    """One Δ row of a main or ablation table (`TableSpec.delta`)."""

    model_config = _STRICT
    row: str | None = None  # the row Δ is computed for (method name or row label); default: the table's `reference`
    # best_other: the best other method row of each column; a row (method name: all its rows) or a
    # list of rows: the best of those in each column.
    versus: str | list[str] = BEST_OTHER
    label: str | None = None  # default "Δ"; "Δ vs KD + BalSoftmax" against named rows; "Δ LTKD" when rows differ

    @field_validator("versus")
    @classmethod
    def _rows_or_best_other(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list) and (not v or BEST_OTHER in v):
            raise ValueError("a row, a non-empty list of rows, or best_other (alone)")
        return v


class DeltaRow(typing.NamedTuple):
    label: str  # the Δ row's label as shown
    row: str  # the row label Δ is computed for
    versus: list[str] | None  # the row labels compared against (the best of them); None: every other method row


class TableSpec(BaseModel):
    """One table of the study, rebuilt from the tracked runs by `ltkd tables` (orchestrator/tables).

    kind      main: rows Teacher, Student, every method row, then Δ; columns pair × γ × {Tail, All}.
              ablation: the method rows (or `rows`); columns pair × {Tail, All}, γ a column level
              only when the study has several. ngroups: rows = pairs; columns = the n(G) values of
              each LTKD-family method (one block per method, e.g. LTKD and LTKD-continuous).
    rows      which rows, in this order: a method name (all its grid rows), a row label such as
              "LTKD (n_groups=4)", or "Teacher" / "Student". Default: main every row; ablation every
              method row; ngroups every method with an n_groups hyperparameter.
    labels    display names: {method name or row label: shown label} (ngroups: {method: block name}).
    delta     main / ablation: true gives a Δ row = `reference` minus the best other method row in
              each column, with a paired t-test over seeds (default: main on when the study has an
              LTKD row; ablation off unless `reference` is set). A mapping {row, versus, label} or a
              list of them gives one Δ row each (`DeltaSpec`): `row` minus `versus`, which is
              best_other (the default), a row, or a list of rows (the best of them in each column).
    reference the row Δ is computed for (method name or row label; default ltkd). A method name
              with several rows stands for its plain row (labelled by its name alone, e.g. "LTKD"
              beside "LTKD + BalSoftmax") when the table shows one.
    metric    ngroups only: which final metric the cells hold (default acc_tail: the paper's n(G)
              table is on the tail group's scale).
    """

    model_config = _STRICT
    kind: Literal["main", "ablation", "ngroups"] = "main"
    name: str | None = None  # names the output files; default: the kind
    title: str | None = None
    rows: list[str] | None = Field(default=None, min_length=1)
    labels: dict[str, str] = {}
    delta: bool | list[DeltaSpec] | None = None
    reference: str | None = None
    metric: Literal["acc_tail", "acc_all", "acc_head", "acc_medium"] | None = None

    @field_validator("name")
    @classmethod
    def _file_name(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z0-9_.-]+", v):
            raise ValueError("allowed: letters, digits, '_', '.', '-' (it names the output files)")
        return v

    @field_validator("delta", mode="before")
    @classmethod
    def _delta_entries(cls, v: Any) -> Any:
        """One Δ row may be written as a mapping; a list gives one Δ row per entry."""
        if v is None or isinstance(v, bool):
            return v
        entries = v if isinstance(v, list) else [v]
        if not entries:
            raise ValueError("give true, false, or at least one {row, versus} entry")
        out = []
        for i, entry in enumerate(entries):
            try:
                out.append(DeltaSpec.model_validate(entry))
            except ValidationError as exc:
                raise ValueError(_format_validation_error(exc, f"entry {i}")) from None
        return out

    @model_validator(mode="after")
    def _kind_fields(self) -> "TableSpec":
        if self.name is None:
            self.name = self.kind
        if self.kind == "ngroups" and (self.delta or self.reference is not None):
            raise ValueError("delta and reference are for main and ablation tables, not ngroups")
        if self.kind != "ngroups" and self.metric is not None:
            raise ValueError("metric is for ngroups tables; main and ablation show Tail and All")
        if self.delta is False and self.reference is not None:
            raise ValueError("reference is set but delta is false")
        return self

    @property
    def cell_metric(self) -> str:
        return self.metric or "acc_tail"

    def shown_rows(self, methods: dict[str, Any], student_baseline: bool) -> list[tuple[str, str | None]]:
        """(row label, method or None for Teacher / Student) of the rows this table shows, in order.

        Raises ValueError naming the entry that matches nothing."""
        from types import SimpleNamespace

        all_rows = [(label, method) for label, method, _ in method_rows(SimpleNamespace(methods=methods))]
        fixed = [("Teacher", None)] + ([("Student", None)] if student_baseline else [])
        if self.kind == "ngroups":
            all_rows = [(lb, m) for lb, m in all_rows if "n_groups" in METHODS[m].params]
            fixed = []
        if self.rows is None:
            return (fixed if self.kind == "main" else []) + all_rows
        chosen: list[tuple[str, str | None]] = []
        for entry in self.rows:
            match = [r for r in fixed + all_rows if entry in (r[0], r[1])]
            if not match:
                allowed = list(dict.fromkeys([lb for lb, _ in fixed] + [m for _, m in all_rows] + [lb for lb, _ in all_rows]))
                what = "methods with an n_groups hyperparameter" if self.kind == "ngroups" else "methods and rows"
                raise ValueError(f"rows: {entry!r} is not one of this study's {what}; allowed: {', '.join(allowed) or 'none'}")
            chosen += [r for r in match if r not in chosen]
        return chosen

    def check(self, methods: dict[str, Any], student_baseline: bool) -> None:
        """Check the table against the study (rows, labels and reference must name its rows)."""
        rows = self.shown_rows(methods, student_baseline)
        if not rows:
            raise ValueError("no rows: the study has no method this table can show")
        names = {lb for lb, _ in rows} | {m for _, m in rows if m}
        for key in self.labels:
            if key not in names:
                raise ValueError(f"labels: {key!r} is not a row of this table; rows: {', '.join(lb for lb, _ in rows)}")
        if self.kind != "ngroups":
            shown = [self.labels.get(lb) or (self.labels.get(m) if m else None) or lb for lb, m in rows]
            if DELTA_LABEL in shown:
                raise ValueError(f"labels: {DELTA_LABEL!r} is the delta row's label")
            clash = sorted({x for x in shown if shown.count(x) > 1})
            if clash:
                raise ValueError(f"labels: two rows would show as {clash[0]!r}")
            deltas = [d.label for d in self.deltas(rows)]
            for label in deltas:
                if label in shown or deltas.count(label) > 1:
                    raise ValueError(f"delta: two rows would show as {label!r}; give the Δ row a label")

    def shown_label(self, label: str, method: str | None) -> str:
        """How a row shows in this table (`labels` applied)."""
        return self.labels.get(label) or (self.labels.get(method) if method else None) or label

    def deltas(self, rows: list[tuple[str, str | None]]) -> list[DeltaRow]:
        """The table's Δ rows, resolved against its rows (ValueError naming the problem). A main table
        that asks for none of delta / reference gets one when it has an LTKD row (and another method row)."""
        if self.kind == "ngroups" or self.delta is False:
            return []
        if isinstance(self.delta, list):
            return self._resolve_deltas(self.delta, rows)
        if self.delta or self.reference is not None:
            return self._resolve_deltas([DeltaSpec()], rows)
        if self.kind == "main":
            try:
                return self._resolve_deltas([DeltaSpec()], rows)
            except ValueError:
                return []
        return []

    def _resolve_deltas(self, entries: list[DeltaSpec], rows: list[tuple[str, str | None]]) -> list[DeltaRow]:
        method_of = dict(rows)
        refs = [self.reference_row(rows, d.row) for d in entries]
        out = []
        for d, ref in zip(entries, refs):
            if d.versus == BEST_OTHER:
                if len([lb for lb, m in rows if m is not None]) < 2:
                    raise ValueError(f"delta needs a method row besides the reference {ref!r} to compare against")
                versus = None
            else:
                versus = []
                for name in [d.versus] if isinstance(d.versus, str) else d.versus:
                    match = [lb for lb in _rows_named(name, rows) if lb != ref]
                    if not match:
                        allowed = ", ".join(lb for lb, _ in rows if lb != ref)
                        raise ValueError(f"delta: versus {name!r} matches no row of this table besides {ref!r} "
                                         f"(the row Δ is computed for); allowed: best_other, {allowed}")
                    versus += [lb for lb in match if lb not in versus]
            label = d.label
            if label is None:
                label = DELTA_LABEL
                if len(set(refs)) > 1:
                    label += " " + self.shown_label(ref, method_of[ref])
                if versus is not None:
                    label += " vs " + versus_text([self.shown_label(v, method_of[v]) for v in versus])
            out.append(DeltaRow(label, ref, versus))
        return out

    def reference_row(self, rows: list[tuple[str, str | None]], name: str | None = None) -> str:
        """The one method row that `name` (else `reference`, else ltkd) names: a row label, or a method
        name with one row, or with several its plain row (labelled by the method's name alone)."""
        ref = name or self.reference or "ltkd"
        match = _rows_named(ref, [(lb, m) for lb, m in rows if m is not None])
        if len(match) > 1 and ref in METHODS:
            match = [lb for lb in match if lb == METHODS[ref].display] or match
        if len(match) != 1:
            shown = ", ".join(lb for lb, m in rows if m is not None)
            problem = "matches no method row" if not match else f"matches {len(match)} rows; name one row label"
            raise ValueError(f"reference {ref!r} (the row Δ is computed for) {problem}; method rows: {shown}")
        return match[0]


def _rows_named(name: str, rows: list[tuple[str, str | None]]) -> list[str]:
    """The row labels `name` names: the row with that label, else every row of the method of that name."""
    return [lb for lb, _ in rows if lb == name] or [lb for lb, m in rows if m == name]


def versus_text(shown: list[str]) -> str:
    """What a Δ row is compared against, in words: one row's label, or "best of A, B"."""
    return shown[0] if len(shown) == 1 else "best of " + ", ".join(shown)


def _check_tables(tables: list[TableSpec], info: ValidationInfo) -> list[TableSpec]:
    if "methods" not in info.data:
        return tables  # the methods failed validation: that is the error to report
    names = [t.name for t in tables]
    for i, table in enumerate(tables):
        if names.index(table.name) != i:
            raise UserError(f"tables.{i}.name = {table.name!r}: two tables with one name (their files would collide)")
        longest = f"{info.data.get('name', '')}_{table.name}{LONGEST_TABLE_FILE_SUFFIX}"
        if len(longest.encode()) > MAX_FILE_NAME_BYTES:
            raise UserError(f"tables.{i}.name = {_shown_value(table.name)}: the file {_shown_value(longest)} would have "
                            f"{len(longest.encode())} bytes; allowed: study and table names that leave it at most {MAX_FILE_NAME_BYTES}")
        try:
            table.check(info.data["methods"], info.data.get("student_baseline", True))
        except ValueError as exc:
            raise UserError(f"tables.{i} ({table.name}): {exc}") from None
    return tables


NON_NEGATIVE_PARAMS = {"alpha", "beta", "gamma", "ce_weight", "weight", "warmup", "tau"}
POSITIVE_PARAMS = {"temperature"}


class PaperTableSpec(BaseModel):
    """The paper's published values for one of the study's tables: per row, one value per column
    in the table's column order (pair × γ × Tail, All), null where the paper has none."""

    model_config = _STRICT
    source: str = Field(min_length=1)  # where the values were read, e.g. "slides, ImageNet-LT table"
    rows: dict[str, list[float | None]] = Field(min_length=1)






class RangeSpec(BaseModel):
    """A continuous (or, for a whole-number hyperparameter, integer) range to search."""

    model_config = _STRICT
    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _non_empty(self) -> "RangeSpec":
        if not self.low < self.high:
            raise ValueError(f"empty range: low ({self.low:g}) must be below high ({self.high:g})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, got {self.low:g}")
        return self


class SearchSpec(BaseModel):
    """An Optuna search over one distillation method's hyperparameters, per (pair, γ), on a balanced
    validation split (never the test set); see orchestrator/search/."""

    model_config = _STRICT
    method: str
    space: dict[str, RangeSpec | list[Any]] = Field(min_length=1)  # values checked by StudySpec._check_search
    trials: int = Field(ge=1, le=10_000)  # per (pair, γ)
    metric: Literal["val_acc_tail", "val_acc_all", "val_acc_head", "val_acc_medium"] = "val_acc_tail"
    sampler: Literal["tpe", "random", "gp", "qmc", "cmaes"] = "tpe"
    pruner: Literal["asha", "none"] = "asha"
    grace_period: int = Field(default=1, ge=1)  # ASHA: epochs before a trial can be stopped
    reduction_factor: int = Field(default=3, ge=2)  # ASHA: the top 1/reduction_factor go on at each rung
    validation_per_class: int = Field(default=20, ge=1)  # images per class held out (a presplit set: its own list)
    seed: int | None = Field(default=None, ge=0, lt=2**32)  # training seed and sampler seed; default: the study's first seed

    @field_validator("space", mode="before")
    @classmethod
    def _dimensions(cls, v: Any) -> Any:
        """Each dimension is a range (a mapping) or a list of choices: said so, not as a union's errors."""
        if not isinstance(v, dict):
            return v
        out = {}
        for key, dim in v.items():
            if isinstance(dim, dict):
                try:
                    out[key] = RangeSpec.model_validate(dim)
                except ValidationError as exc:
                    raise UserError(_format_validation_error(exc, "", f"search.space.{key}")) from None
            elif isinstance(dim, list):
                out[key] = dim
            else:
                raise UserError(f"search.space.{key} = {_shown_value(dim)}: give a range {{low, high}} or a list of choices")
        return out

    @field_validator("method")
    @classmethod
    def _distillation_method(cls, v: str) -> str:
        if v not in METHODS:
            raise ValueError(f"unknown method; allowed: {', '.join(sorted(m for m in METHODS if METHODS[m].needs_teacher))}")
        if not METHODS[v].needs_teacher:
            raise ValueError(f"{v} trains without a teacher; a search is over a distillation method: "
                             f"{', '.join(sorted(m for m in METHODS if METHODS[m].needs_teacher))}")
        return v


class StudySpec(BaseModel):
    model_config = _STRICT
    name: str = Field(min_length=1, max_length=MAX_NAME_CHARS)
    description: str = Field(default="", max_length=MAX_DESCRIPTION_CHARS)
    dataset: DatasetSpec
    pairs: list[PairSpec] = Field(min_length=1)
    # Values are checked against each method's declared defaults (`check_param`), one line per problem.
    methods: dict[str, dict[str, Any]] = {}
    student_baseline: bool = True  # the Student (CE) row
    seeds: list[StrictInt] = Field(default=[0], min_length=1)
    recipe: RecipeSpec = RecipeSpec()  # type: ignore[valid-type]
    teacher_recipe: TeacherRecipeSpec = TeacherRecipeSpec()  # overrides of `recipe` for teacher trials
    resources: ResourcesSpec = ResourcesSpec()
    tables: typing.Annotated[list[TableSpec], AfterValidator(_check_tables)] = [TableSpec()]
    paper: dict[str, PaperTableSpec] = {}  # table name -> the paper's values (`ltkd tables --versus paper`)
    search: SearchSpec | None = None  # `ltkd search`: Optuna over one method's hyperparameters
    # methods.<m>.from_search, read by load_study: method -> {(teacher, student, gamma): chosen hyperparameters}
    # (None: the file is not written yet and the study was loaded for `ltkd search`, which runs first)
    _search_points: dict[str, dict[tuple[str, str, float], dict[str, Any]] | None] = PrivateAttr(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _usable_name(cls, v: str) -> str:
        # The name is an MLflow experiment, a folder (Tune's experiment, the spool) and the start of
        # the table files' names: it must be all three, on every filesystem.
        if any(c in v for c in "/\\") or v.startswith(".") or any(ord(c) < 32 or ord(c) == 127 for c in v) or v != v.strip():
            raise ValueError("the study name names an experiment, a folder and files: no '/', '\\', control characters, "
                             "leading '.' or surrounding spaces")
        if len(v.encode()) > MAX_FILE_NAME_BYTES - 1 - len(LONGEST_TABLE_FILE_SUFFIX) - len("main"):
            raise ValueError(f"{len(v.encode())} bytes in UTF-8; the table files' names (NAME_main{LONGEST_TABLE_FILE_SUFFIX}) "
                             f"must fit the filesystem's {MAX_FILE_NAME_BYTES} bytes: allowed: at most "
                             f"{MAX_FILE_NAME_BYTES - 1 - len(LONGEST_TABLE_FILE_SUFFIX) - len('main')} bytes")
        return v

    @field_validator("pairs")
    @classmethod
    def _distinct_pairs(cls, v: list[PairSpec]) -> list[PairSpec]:
        seen = [(p.teacher, p.student) for p in v]
        for i, pair in enumerate(seen):
            if seen.index(pair) != i:
                raise ValueError(f"{pair[0]}>{pair[1]} is listed twice (entries {seen.index(pair)} and {i}: its table columns "
                                 "would collide)")
        return v

    @field_validator("seeds")
    @classmethod
    def _usable_seeds(cls, v: list[int]) -> list[int]:
        for seed in v:
            if not 0 <= seed < 2**32:
                raise ValueError(f"seed {seed} is not allowed: seeds are whole numbers from 0 to 2**32 - 1 (what the RNGs accept)")
        if len(set(v)) != len(v):
            raise ValueError(f"seed {next(x for x in v if v.count(x) > 1)} is listed twice")
        return v

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, methods: dict) -> dict:
        for name in methods:
            if name not in METHODS:
                raise ValueError(f"unknown method {name!r}; allowed: {', '.join(sorted(METHODS))}")
        return methods

    @model_validator(mode="after")
    def _check_paper(self) -> "StudySpec":
        tables = {t.name: t for t in self.tables}
        for name, block in self.paper.items():
            field = f"paper.{name}"
            if name not in tables:
                raise UserError(f"{field}: no table of this study has that name; its tables: {', '.join(tables)}")
            table = tables[name]
            if table.kind == "ngroups":
                raise UserError(f"{field}: paper values are for main and ablation tables; {name!r} is an ngroups table")
            try:
                rows = table.shown_rows(self.methods, self.student_baseline)
            except ValueError:
                continue  # the table itself is wrong: reported by its own check
            shown = {table.shown_label(label, method): label for label, method in rows}
            methods = [method for _, method in rows if method is not None]
            single = {m for m in methods if methods.count(m) == 1}
            columns = len(self.pairs) * len(self.dataset.gammas) * 2
            for row, values in block.rows.items():
                if row not in shown and row not in shown.values() and row not in single and row != DELTA_LABEL:
                    raise UserError(f"{field}.rows.{row}: not a row of table {name!r}; its rows: {', '.join(shown)}")
                if len(values) != columns:
                    raise UserError(f"{field}.rows.{row}: {len(values)} values; the table has {columns} columns "
                                    "(pair × γ × Tail, All, in the study's order)")
        return self

    @model_validator(mode="after")
    def _check_data_path(self) -> "StudySpec":
        """recipe.data_path: device only for a dataset held in memory (`trainer.datasets.data_path_of`)."""
        for field, value in (("recipe.data_path", self.recipe.data_path), ("teacher_recipe.data_path", self.teacher_recipe.data_path)):
            if value is not None:
                try:
                    data_path_of(self.dataset.name, value)
                except ValueError as exc:
                    raise UserError(f"{field} = {value!r}: {exc}") from None
        return self

    @model_validator(mode="after")
    def _check_method_params(self) -> "StudySpec":
        num_classes = num_classes_of(self.dataset.name, self.dataset.options)
        for name, params in self.methods.items():
            allowed = METHODS[name].params
            for key, value in params.items():
                field = f"methods.{name}.{key}"
                if key == FROM_SEARCH:
                    if not isinstance(value, str) or not value.strip():
                        raise UserError(f"{field} = {value!r}: the name of a search study (its `ltkd best` file, "
                                        "NAME.best.yaml beside this study) or the path of that file")
                    continue
                if key not in allowed:
                    raise UserError(f"{field}: unknown hyperparameter; allowed for {name}: {', '.join(allowed) or 'none'}")
                values = value if isinstance(value, list) else [value]
                if not values:
                    raise UserError(f"{field} = []: a grid needs at least one value")
                for v in values:
                    check_param(field, key, v, allowed[key], num_classes)
        if self.search is not None:
            self._check_search(num_classes)
        self._check_row_labels()
        return self

    def _check_row_labels(self) -> None:
        """Every grid point of every method shows as its own row: two values of one hyperparameter that
        print alike (`alpha: [1, 1.0]`, or equal to 6 significant digits) would make two grid points one
        row of the tables. Checked per list of values, so a huge grid is not expanded to find out."""
        for method, params in self.methods.items():
            declared = METHODS[method].params
            for key, values in params.items():
                if key == FROM_SEARCH or not isinstance(values, list) or key not in declared:
                    continue
                shown = [_fmt(_as_type_of(declared[key], v)) for v in values]
                for i, label in enumerate(shown):
                    if shown.index(label) != i:
                        raise UserError(f"methods.{method}.{key}: the grid values {values[shown.index(label)]!r} and {values[i]!r} "
                                        f"both show as {key}={label} (one table row); give distinct values (shown to 6 "
                                        "significant digits)")

    def _check_search(self, num_classes: int) -> None:
        search = self.search
        try:
            check_profile(self.dataset, search.validation_per_class)
        except ValueError as exc:
            raise UserError(f"search.validation_per_class = {search.validation_per_class}: {exc}") from None
        allowed = METHODS[search.method].params
        for key, dim in search.space.items():
            field = f"search.space.{key}"
            if key not in allowed:
                raise UserError(f"{field}: unknown hyperparameter; allowed for {search.method}: {', '.join(allowed) or 'none'}")
            if isinstance(dim, RangeSpec):
                if isinstance(allowed[key], (bool, str)):
                    raise UserError(f"{field}: {key} takes {type(allowed[key]).__name__} values: give a list of choices, not a range")
                for v in (dim.low, dim.high):
                    check_param(field, key, int(v) if isinstance(allowed[key], int) and float(v).is_integer() else v,
                                 allowed[key], num_classes)
            else:
                if not dim:
                    raise UserError(f"{field} = []: give at least one choice, or a range {{low, high}}")
                for v in dim:
                    check_param(field, key, v, allowed[key], num_classes)
        for key, value in self.methods.get(search.method, {}).items():
            if isinstance(value, list) and len(value) > 1 and key not in search.space:
                raise UserError(f"methods.{search.method}.{key}: a grid beside search.space; put {key} in the space, or give one value")


def check_param(field: str, key: str, value: Any, default: Any, num_classes: int) -> None:
    expected = type(default)
    if key in PARAM_CHOICES and (not isinstance(value, str) or value not in PARAM_CHOICES[key]):
        raise UserError(f"{field} = {value!r}: allowed: {', '.join(PARAM_CHOICES[key])}")
    if expected is str and not isinstance(value, str):
        raise UserError(f"{field} = {value!r}: must be text")
    if expected is bool and not isinstance(value, bool):
        raise UserError(f"{field} = {value!r}: must be true or false")
    if expected in (int, float) and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise UserError(f"{field} = {value!r}: must be a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{field} = {value}: NaN or infinite numbers are not allowed")
    if isinstance(value, int) and not isinstance(value, bool) and int64_problem(value):
        raise UserError(f"{field} = {value}: {int64_problem(value)}")
    if expected is int and not float(value).is_integer():
        raise UserError(f"{field} = {value!r}: must be a whole number")
    if expected is int and isinstance(value, float) and int64_problem(int(value)):
        raise UserError(f"{field} = {value!r}: {int64_problem(int(value))}")
    if expected is float and float32_problem(float(value)):
        raise UserError(f"{field} = {value!r}: {float32_problem(float(value))}")
    if key == "n_groups" and not 1 <= value <= num_classes:
        raise UserError(f"{field} = {value}: n(G) must be between 1 and the number of classes ({num_classes})")
    if key in NON_NEGATIVE_PARAMS and value < 0:
        raise UserError(f"{field} = {value}: must be >= 0")
    if key in POSITIVE_PARAMS and value <= 0:
        raise UserError(f"{field} = {value}: must be > 0")


def _format_validation_error(exc: ValidationError, source: str, field: str = "") -> str:
    """pydantic's first error as one line: `source: field.loc = value: what is allowed`. `field` is where
    the validated mapping sits in the study (its own errors, with no loc of their own, are named by it)."""
    err = exc.errors()[0]
    loc = ".".join([field] * bool(field) + [str(p) for p in err["loc"]])
    head = f"{source}: {loc}" if source and loc else source or loc
    if err["type"] == "extra_forbidden":
        return f"{head}: unknown key"
    if err["type"] == "missing":
        return f"{head}: required field is missing"
    msg = err["msg"].removeprefix("Value error, ")
    value = err.get("input")
    shown = f" = {_shown_value(value)}" if not isinstance(value, (dict, list)) else ""
    more = len(exc.errors()) - 1
    return f"{head}{shown}: {msg}" + (f" (and {more} more problem{'s' if more > 1 else ''})" if more else "")


def _shown_value(value: Any, limit: int = 60) -> str:
    """A value as an error line shows it: its repr, cut to `limit` characters with the full length said."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(value) if isinstance(value, str) else len(text):,} characters)"


def parse_study(data: Any, source: str = "study") -> StudySpec:
    if not isinstance(data, dict):
        raise UserError(f"{source}: the study must be a YAML mapping of keys to values, got {type(data).__name__}")
    try:
        return StudySpec.model_validate(data)
    except UserError as exc:
        raise UserError(f"{source}: {exc}") from None
    except ValidationError as exc:
        # Errors raised as UserError inside validators arrive wrapped; unwrap them to keep one line.
        for err in exc.errors():
            ctx_err = (err.get("ctx") or {}).get("error")
            if isinstance(ctx_err, UserError):
                raise UserError(f"{source}: {ctx_err}") from None
        raise UserError(_format_validation_error(exc, source)) from None
