"""Reading a study file: size limits, strict YAML, the search results a study takes its values from."""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import yaml

from orchestrator.errors import UserError, first_line
from trainer.datasets import num_classes_of
from trainer.methods import METHODS
from orchestrator.study.rows import FROM_SEARCH
from orchestrator.study.schema import StudySpec, check_param, max_study_bytes, max_trials, max_yaml_nodes, parse_study


class _StudyLoader(yaml.SafeLoader):
    """PyYAML's safe loader that refuses what a user did not mean: a key given twice in one mapping
    (PyYAML keeps the last silently), and a document that grows past MAX_YAML_NODES once its
    aliases are expanded (an alias bomb: a few lines that expand to billions of nodes)."""

    def get_single_data(self):
        node = self.get_single_node()
        if node is None:
            return None
        limit = max_yaml_nodes()
        size = _expanded_size(node, {}, limit)
        if size > limit:
            raise yaml.YAMLError(f"the document expands to more than {limit:,} values once its aliases (*name) are "
                                 "expanded; set LTKD_MAX_YAML_NODES to allow more")
        return self.construct_document(node)

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *base`: the merged keys may be overridden here; flatten_mapping merges them
            key = self.construct_object(key_node, deep=True)
            try:
                given_twice = key in seen
            except TypeError:  # a list or mapping as a key
                raise yaml.constructor.ConstructorError(None, None, f"a key must be a plain value, got a {type(key).__name__} "
                                                        f"({key!r})", key_node.start_mark) from None
            if given_twice:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


# YAML 1.2's floats, which PyYAML (YAML 1.1) reads as strings when they have no dot: `1e-1`, `5E3`. Users mean numbers.
_StudyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)$"), list("-+0123456789"))


def _expanded_size(node, memo: dict[int, int], limit: int) -> int:
    """Values in a composed YAML node with every alias expanded, each shared node counted once
    per use (memoised, so a bomb is measured without being expanded); stops past the limit."""
    if id(node) in memo:
        return memo[id(node)]
    memo[id(node)] = limit + 1  # a node that contains itself is refused as too large
    if isinstance(node, yaml.SequenceNode):
        children = node.value
    elif isinstance(node, yaml.MappingNode):
        children = [n for pair in node.value for n in pair]
    else:
        children = []
    total = 1
    for child in children:
        total += _expanded_size(child, memo, limit)
        if total > limit:
            break
    memo[id(node)] = total
    return total


def _non_finite(data: Any, path: str = "") -> str | None:
    """The path of the first NaN or infinite number in the parsed study, if any."""
    if isinstance(data, float) and not math.isfinite(data):
        return f"{path or '(top level)'} = {data}"
    if isinstance(data, dict):
        items = data.items()
    elif isinstance(data, list):
        items = enumerate(data)
    else:
        return None
    for key, value in items:
        found = _non_finite(value, f"{path}.{key}" if path else str(key))
        if found:
            return found
    return None


def trial_count(study: StudySpec) -> int:
    """How many trials the study expands into (before sharing teachers), without expanding it."""
    grid = sum(math.prod(len(v) if isinstance(v, list) else 1 for v in params.values()) for params in study.methods.values())
    return len(study.dataset.gammas) * len(study.seeds) * len(study.pairs) * (grid + 1 + int(study.student_baseline))


def load_study(path: str | Path, search_results_needed: bool = True) -> StudySpec:
    """The validated study at `path`. search_results_needed=False: a method that takes its values from a
    search (`from_search`) whose file is not written yet is left out instead of refused."""
    path = Path(path)
    try:
        is_file = path.is_file()
        size = path.stat().st_size if is_file else 0
    except OSError as exc:  # a name too long for the filesystem, a folder without permission, ...
        raise UserError(f"{str(path)[:200]}: cannot open the study file ({exc.strerror or exc})") from None
    if not is_file:
        raise UserError(f"{path}: no such study file")
    if size > max_study_bytes():
        raise UserError(f"{path}: {size:,} bytes; a study file may have at most {max_study_bytes():,} (set LTKD_MAX_STUDY_BYTES to allow more)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text (byte {exc.start}); save the study as UTF-8") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read the study file ({exc.strerror or exc})") from None
    try:
        data = yaml.load(text, Loader=_StudyLoader)  # noqa: S506 - a SafeLoader subclass
    except RecursionError:
        raise UserError(f"{path}: not valid YAML: nested too deeply") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or first_line(exc, 300) or type(exc).__name__
        raise UserError(f"{path}: not valid YAML{where}: {problem}") from None
    bad = _non_finite(data)
    if bad:
        raise UserError(f"{path}: {bad}: NaN or infinite numbers are not allowed")
    study = parse_study(data, str(path))
    try:
        _read_search_points(study, path.parent, missing_ok=not search_results_needed)
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None
    count = trial_count(study)
    if count > max_trials():
        raise UserError(f"{path}: the study expands into {count:,} trials; at most {max_trials():,} are allowed "
                        "(set LTKD_MAX_TRIALS to allow more)")
    return study


def best_file_path(value: str, study_dir: Path) -> Path:
    """Where `methods.<m>.from_search: VALUE` points: a path (relative to the study's folder) when it
    names a .yaml file, else the file `ltkd best` writes for the search study of that name."""
    if value.endswith((".yaml", ".yml")) or "/" in value:
        path = Path(value).expanduser()
        return path if path.is_absolute() else study_dir / path
    return study_dir / f"{value}.best.yaml"


def _read_search_points(study: StudySpec, study_dir: Path, missing_ok: bool = False) -> None:
    """Read each `from_search` file and check it covers every (pair, γ) of the study. missing_ok: a
    method whose file is not written yet is left out of the study (`ltkd search` of a study whose grid
    takes the search's own result: the search comes first)."""
    num_classes = num_classes_of(study.dataset.name, study.dataset.options)
    for method, params in list(study.methods.items()):
        if FROM_SEARCH not in params:
            continue
        field = f"methods.{method}.{FROM_SEARCH}"
        path = best_file_path(str(params[FROM_SEARCH]), study_dir)
        if missing_ok and not path.is_file():
            study._search_points[method] = None  # not written yet: expand leaves the method out
            continue
        if not path.is_file():
            raise UserError(f"{field} = {params[FROM_SEARCH]!r}: no file {path}; `ltkd search` the study that searches "
                            f"{method}, then `ltkd best` it, to write that file")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise UserError(f"{field}: {path}: cannot read it as YAML ({first_line(exc, 300) or type(exc).__name__})") from None
        if not isinstance(data, dict) or not isinstance(data.get("points"), list):
            raise UserError(f"{field}: {path}: not a file of `ltkd best` (no list of points)")
        if data.get("method") != method:
            raise UserError(f"{field}: {path} holds a search of {data.get('method')!r}, not of {method}")
        points: dict[tuple[str, str, float], dict[str, Any]] = {}
        for i, item in enumerate(data["points"]):
            try:
                key = (str(item["teacher"]), str(item["student"]), float(item["gamma"]))
                chosen = dict(item["params"])
            except (KeyError, TypeError, ValueError):
                raise UserError(f"{field}: {path}: points.{i} needs teacher, student, gamma and params") from None
            for k, v in chosen.items():
                if k not in METHODS[method].params:
                    raise UserError(f"{field}: {path}: points.{i}.params.{k}: unknown hyperparameter of {method}")
                check_param(f"{path}: points.{i}.params.{k}", k, v, METHODS[method].params[k], num_classes)
            clash = sorted(k for k, v in params.items() if k != FROM_SEARCH and k in chosen)
            if clash:
                raise UserError(f"methods.{method}.{clash[0]}: also chosen by the search ({path}); leave it to the search or drop from_search")
            points[key] = chosen
        missing = [f"{p.teacher}>{p.student} γ={g:g}" for p in study.pairs for g in study.dataset.gammas
                   if (p.teacher, p.student, float(g)) not in points]
        if missing:
            have = ", ".join(f"{t}>{s} γ={g:g}" for t, s, g in points) or "none"
            raise UserError(f"{field}: {path} has no point for {', '.join(missing)} (it has: {have}); "
                            "search those pairs and γ values, or drop them from this study")
        study._search_points[method] = points
