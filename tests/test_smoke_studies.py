"""Every offline `*_smoke` twin of a paper table: swept from a fresh store, its tables and plots regenerated."""
from pathlib import Path

import pandas as pd
import pytest

from orchestrator.cli import main
from orchestrator.study import load_study

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
# tinyimagenet_lt_main_smoke runs in tests/test_tables.py, search_smoke (a search, then its grid) in
# tests/test_search.py; the others here.
TWINS = sorted(p.name for p in (REPO / "studies").glob("*_smoke.yaml") if p.stem not in ("tinyimagenet_lt_main_smoke", "search_smoke"))


@pytest.mark.parametrize("name", TWINS)
def test_smoke_twin_sweeps_and_regenerates_its_tables(ray_local, tmp_path, capsys, name):
    path = REPO / "studies" / name
    study = load_study(path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert main(["sweep", str(path), "--tracking-uri", uri]) == 0, capsys.readouterr().err
    out_dir = tmp_path / "out"
    assert main(["tables", str(path), "--tracking-uri", uri, "--out", str(out_dir)]) == 0
    captured = capsys.readouterr()
    assert "missing" not in captured.err, captured.err
    for table in study.tables:
        stem = f"{study.name}_{table.name}"
        for ext in ("md", "tex", "csv", "html"):
            assert (out_dir / f"{stem}.{ext}").stat().st_size > 100, (stem, ext)
        cells = pd.read_csv(out_dir / f"{stem}.csv")
        measured = cells[~cells["row"].str.startswith("Δ")]  # Δ, "Δ vs KD + BalSoftmax", ...
        assert len(measured) and (measured["n"] == measured["expected"]).all()
        assert measured["mean"].between(0, 100).all()
        deltas = cells[cells["row"].str.startswith("Δ")]
        assert (deltas["versus"].notna() & (deltas["n"] == deltas["expected"])).all()  # every Δ cell computed
    pngs = list(out_dir.glob("*.png"))
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    for table in study.tables:  # main tables plot per-class accuracy, n(G) tables the n(G) curve
        if table.kind in ("main", "ngroups"):
            assert [p for p in pngs if p.name.startswith(f"{study.name}_{table.name}_")], table.name
    # Artifacts live beside the store, not in the folder the command ran from.
    assert (tmp_path / "mlruns").is_dir()
