"""A study's grid points and the table rows they make: labels and full hyperparameters."""
from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any


from trainer.recipes import method_defaults
from trainer.methods import METHODS, SUPERVISED_LOSSES

if TYPE_CHECKING:  # annotations only: the schema imports this module
    from orchestrator.study.schema import StudySpec


FROM_SEARCH = "from_search"  # methods.<m>.from_search: take its hyperparameters from `ltkd best`'s file


def gamma_text(g: float) -> str:
    """γ as run names, tables and the plan show it."""
    return f"{g:g}"


def _grid(params: dict[str, Any]) -> list[dict[str, Any]]:
    keys = list(params)
    values = [params[k] if isinstance(params[k], list) else [params[k]] for k in keys]
    return [dict(zip(keys, combo)) for combo in itertools.product(*values)]


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def method_rows(study: StudySpec) -> list[tuple[str, str, dict[str, Any]]]:
    """(row label, method, the study's hyperparameters) for every grid point of every method.

    A method with a single grid point is labelled by its name; grid points add the varied values
    (`row_label`). The full hyperparameters also take the method's and the recipe's defaults (`full_params`).
    """
    rows = []
    for name, params in study.methods.items():
        spec = METHODS[name]
        params = {k: v for k, v in params.items() if k != FROM_SEARCH}  # per (pair, γ): see expand
        varied = [k for k, v in params.items() if isinstance(v, list) and len(v) > 1]
        for point in _grid(params):
            rows.append((row_label(spec.display or name, point, varied), name, point))
    return rows


def row_label(display: str, point: dict[str, Any], varied: list[str]) -> str:
    """A grid point's row label: the method's name, " + BalSoftmax" when its supervised term is not
    plain CE (`ce`, varied or not), then the other varied values: "LTKD + BalSoftmax (beta=2)"."""
    shown = SUPERVISED_LOSSES.get(point.get("ce", "standard"), "")
    label = display + (f" + {shown}" if shown else "")
    others = [k for k in varied if k != "ce"]
    if others:
        label += " (" + ", ".join(f"{k}={_fmt(point[k])}" for k in others) + ")"
    return label


def full_params(study: StudySpec, method: str, point: dict[str, Any], teacher: str | None, student: str | None) -> dict[str, Any]:
    """Method defaults, then the recipe preset's defaults for this method and pair, then the study's.

    Values take the type of the method's default (1 and 1.0 are one hyperparameter value), so the
    way a YAML file writes a number never changes a trial's identity.
    """
    declared = METHODS[method].params
    preset_defaults = method_defaults(study.recipe.preset, method, teacher, student)
    merged = {**declared, **{k: v for k, v in preset_defaults.items() if k in declared}, **point}
    return {k: _as_type_of(declared[k], v) for k, v in merged.items()}


def _as_type_of(default: Any, value: Any) -> Any:
    if isinstance(default, bool) or isinstance(value, bool):
        return value
    if isinstance(default, float) and isinstance(value, int):
        return float(value)
    if isinstance(default, int) and isinstance(value, float) and value.is_integer():
        return int(value)
    return value
