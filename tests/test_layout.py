"""The orchestrator's layout stays true: its packages import in one direction, each engine is imported by
its one adapter package, no module circle, no project import hidden in a function body (outside the
commands, where laziness keeps `ltkd --help` fast), and every study's trials keep their identity."""
import ast
import functools
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ROOT = REPO / "orchestrator"

# Packages in import order: a package imports only those of a lower rank (search and tables share one
# rank and import neither each other). errors, paths and words are helpers every package may import.
RANK = {"study": 1, "tracking": 2, "execution": 3, "search": 4, "tables": 4, "commands": 5, "cli": 6}
LEAVES = {"orchestrator", "orchestrator.errors", "orchestrator.paths", "orchestrator.words"}
# Each engine and the only places that import it.
ENGINES = {
    "mlflow": ("orchestrator.tracking",),
    "ray": ("orchestrator.execution", "orchestrator.search.tune"),  # search's Tune glue: its searcher, scheduler, callback
    "optuna": ("orchestrator.search",),
}
# Project imports that stay inside a function body outside commands/ and cli.py, and why.
LAZY_ALLOWED = {
    ("orchestrator.execution.trainable", "trainer.loop"): "PyTorch: imported in the Ray worker that trains, not by the driver",
    ("orchestrator.tracking.tracker", "trainer"): "the trainer's folder, shipped with a model, only when one is logged",
    ("orchestrator.tracking.tracker", "trainer.loop"): "PyTorch: only when the writer saves a model (the sweep imports no torch)",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def shown(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else path.name


def package_of(module: str) -> str:
    """'orchestrator.tracking.spool' -> 'tracking'; 'orchestrator.cli' -> 'cli'; a leaf -> ''."""
    if module in LEAVES:
        return ""
    return module.split(".")[1]


@functools.cache  # every test reads the same files
def imports(path: Path) -> tuple:
    """(imported module, names, inside a function, line) of every import that runs (`if TYPE_CHECKING:` blocks skipped)."""
    found = []

    def walk(node, in_function: bool):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and isinstance(child.test, ast.Name) and child.test.id == "TYPE_CHECKING":
                continue
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                found.append((child.module, [a.name for a in child.names], inner, child.lineno))
            elif isinstance(child, ast.Import):
                found.extend((a.name, [], inner, child.lineno) for a in child.names)
            walk(child, inner)

    walk(ast.parse(path.read_text(encoding="utf-8")), False)
    return tuple(found)


def project_targets(module: str, names: list[str]) -> list[str]:
    """The orchestrator modules an import statement loads: `from orchestrator.tracking import spool`
    names the submodule, `from orchestrator.tracking import Tracker` the package."""
    subs = [f"{module}.{n}" for n in names if f"{module}.{n}" in MODULES]
    return subs or [module]


def edges():
    for module, path in MODULES.items():
        for target, names, in_function, line in imports(path):
            if target.split(".")[0] == "orchestrator":
                for t in project_targets(target, names):
                    yield module, t, in_function, f"{shown(path)}:{line}"


def test_packages_import_only_packages_before_them():
    wrong = []
    for module, target, _, where in edges():
        src, dst = package_of(module), package_of(target)
        if not src or not dst or src == dst:
            continue
        if src not in RANK or dst not in RANK:
            wrong.append(f"{where}: {module} -> {target}: a module outside the packages {sorted(RANK)}")
        elif RANK[dst] >= RANK[src]:
            wrong.append(f"{where}: {module} imports {target}, which comes after it or beside it")
    assert not wrong, "\n".join(wrong)


def test_each_engine_is_imported_only_by_its_adapter():
    wrong = []
    for module, path in MODULES.items():
        for target, _, _, line in imports(path):
            engine = target.split(".")[0]
            owners = ENGINES.get(engine)
            if owners and not any(module == o or module.startswith(o + ".") for o in owners):
                wrong.append(f"{shown(path)}:{line}: {module} imports {target}; only {', '.join(owners)} may")
    assert not wrong, "\n".join(wrong)


def test_no_import_circle():
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module, target, in_function, _ in edges():
        if not in_function and target in graph and target != module:
            graph[module].add(target)
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    circles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                circles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not circles, "\n".join(circles)


def test_project_imports_sit_at_the_top_outside_the_commands():
    hidden = []
    for module, path in MODULES.items():
        if module == "orchestrator.cli" or module.startswith("orchestrator.commands"):
            continue
        for target, _, in_function, line in imports(path):
            if in_function and target.split(".")[0] in ("orchestrator", "trainer") and (module, target) not in LAZY_ALLOWED:
                hidden.append(f"{shown(path)}:{line}: {target} imported inside a function")
    assert not hidden, "\n".join(hidden)
    kept = {(m, t) for m, p in MODULES.items() for t, _, inner, _ in imports(p) if inner}
    assert set(LAZY_ALLOWED) <= kept, f"listed but gone (drop them from LAZY_ALLOWED): {set(LAZY_ALLOWED) - kept}"


def test_the_checks_catch_a_break_of_the_rules(tmp_path):
    """The rules above fail on modules that break them, read as if they were in orchestrator/study/
    (so a pass means something)."""
    bad = tmp_path / "_layout_probe.py"
    other = tmp_path / "_layout_probe_b.py"
    bad.write_text("import mlflow\nfrom orchestrator.commands.session import open_plan\nfrom orchestrator.study import _layout_probe_b\n\n\n"
                   "def f():\n    from orchestrator.tracking import Tracker\n")
    other.write_text("from orchestrator.study._layout_probe import f\n")
    try:
        MODULES["orchestrator.study._layout_probe"] = bad
        MODULES["orchestrator.study._layout_probe_b"] = other
        with pytest.raises(AssertionError, match="orchestrator.study._layout_probe -> orchestrator.study._layout_probe_b -> "
                                                 "orchestrator.study._layout_probe"):
            test_no_import_circle()
        with pytest.raises(AssertionError, match="_layout_probe imports orchestrator.commands.session"):
            test_packages_import_only_packages_before_them()
        with pytest.raises(AssertionError, match="_layout_probe imports mlflow"):
            test_each_engine_is_imported_only_by_its_adapter()
        with pytest.raises(AssertionError, match="_layout_probe.py:7: orchestrator.tracking imported inside a function"):
            test_project_imports_sit_at_the_top_outside_the_commands()
    finally:
        MODULES.pop("orchestrator.study._layout_probe", None)
        MODULES.pop("orchestrator.study._layout_probe_b", None)


def test_the_cli_names_the_formats_the_tables_render():
    from orchestrator import cli
    from orchestrator.tables.render import FORMATS

    assert cli.FORMATS == FORMATS


def study_hashes(path: Path) -> dict[str, str]:
    """Every trial's config_hash by run name (teachers, students, distillations), and for a search
    study each search's key and the identity of its trial #0 at the low end of every range."""
    from orchestrator.search.space import search_trial, targets
    from orchestrator.study import RangeSpec, config_hash, expand, load_study

    study = load_study(path, search_results_needed=False)
    trials = expand(study)
    out = {t.run_name: t.config_hash for t in trials}
    if study.search is not None:
        for target in targets(study, trials):
            out[f"search key {target.label}"] = target.key
            low = {k: (d.low if isinstance(d, RangeSpec) else list(d)[0]) for k, d in study.search.space.items()}
            trial = search_trial(target, 0, low, study)
            out[f"{trial.run_name} config"] = config_hash(trial.config, trial.teacher_hash)
            out[trial.run_name] = trial.config_hash
    return out


def test_every_study_keeps_its_trials_config_hashes():
    """tests/data/config_hashes.json was computed before the orchestrator moved into packages."""
    recorded = json.loads((REPO / "tests" / "data" / "config_hashes.json").read_text())
    studies = sorted(p.name for p in (REPO / "studies").glob("*.yaml"))
    assert sorted(recorded) == studies
    for name in studies:
        assert study_hashes(REPO / "studies" / name) == recorded[name], name
