"""Tables: golden outputs from a fixture MLflow store with known numbers, and one real sweep + tables --out.

The fixture store holds FINISHED runs created with MlflowClient, carrying what the planner and the
tables read (tags config_hash / role / row / study from expand() of the study, final metrics).
"""
from __future__ import annotations

import math
import re
import statistics
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from scipy.stats import ttest_rel

from orchestrator.cli import main
from orchestrator.study import expand, load_study, parse_study
from orchestrator.tables import build_tables, render
from orchestrator.tracking import Tracker

REPO = Path(__file__).resolve().parents[1]

MAIN = """
name: golden_main
dataset: {name: digits, gammas: [10, 50]}
pairs: [{teacher: cnn_w16, student: cnn_w4}]
methods: {kd: {}, dkd: {}, ltkd: {}}
seeds: [0, 1, 2]
"""
# (row, gamma) -> [(acc_tail, acc_all) of seed 0, 1, 2]; None = no FINISHED run for that seed.
MAIN_VALUES = {
    ("Teacher", 10): [(50, 70), (52, 72), (54, 74)],
    ("Student", 10): [(30, 60), (31, 61), (32, 62)],
    ("KD", 10): [(40, 64.8), (42, 66.2), None],  # a seed short: (n=2)
    ("DKD", 10): [(40, 64), (41.5, 65), (41.5, 66)],  # Tail mean 41.00 ties KD's: both second
    ("LTKD", 10): [(44, 66), (45, 67), (46, 68)],
    ("Teacher", 50): [(20, 50), (22, 52), (24, 54)],
    ("Student", 50): [(5, 30), (6, 31), (7, 32)],
    ("KD", 50): [(10, 40), (12, 41), (11, 42)],
    ("DKD", 50): [None, None, None],  # a missing cell
    ("LTKD", 50): [(15, 44), (18, 44.5), (16, 46.1)],
}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite store for the module (creating MLflow's schema costs seconds): (uri, folder)."""
    folder = tmp_path_factory.mktemp("tables-store")
    uri = f"sqlite:///{folder}/mlflow.db"
    MlflowClient(tracking_uri=uri).search_experiments()  # creates the schema
    return uri, folder


def fill(uri: str, folder: Path, text: str, values) -> tuple[Path, list]:
    """Write the study file and one FINISHED run per trial that `values(trial)` gives metrics for."""
    data = yaml.safe_load(textwrap.dedent(text))
    study = parse_study(data)
    trials = expand(study)
    path = folder / f"{study.name}.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False))
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment(study.name, artifact_location=str(folder / "artifacts" / study.name))
    now = int(time.time() * 1000)
    for i, t in enumerate(trials):
        metrics = values(t)
        if metrics is None:
            continue
        tags = {"study": study.name, "config_hash": t.config_hash, "role": t.role, "row": t.row}
        run = client.create_run(exp, start_time=now + i, tags=tags, run_name=t.run_name)
        client.log_batch(run.info.run_id, metrics=[Metric(k, float(v), now, 1) for k, v in metrics.items()],
                         params=[Param("seed", str(t.config.seed))], synchronous=True)
        client.set_terminated(run.info.run_id, "FINISHED")
    return path, trials


def main_values(t):
    v = MAIN_VALUES[(t.row, t.config.gamma)][t.config.seed]
    return None if v is None else {"acc_tail": v[0], "acc_all": v[1]}


def tables_of(uri: str, path: Path):
    study = parse_study(yaml.safe_load(path.read_text()))
    trials = expand(study)
    tracker = Tracker(uri)
    found = tracker.final_metrics_by_hash(tracker.experiment_id(study.name))
    return build_tables(study, trials, found)


@pytest.fixture(scope="module")
def main_table(store):
    uri, folder = store
    path, _ = fill(uri, folder, MAIN, main_values)
    (table,) = tables_of(uri, path)
    return uri, path, table


ABLATION = """
name: golden_ablation
dataset: {name: digits, gammas: [10]}
pairs: [{teacher: cnn_w16, student: cnn_w4}, {teacher: cnn_w8, student: cnn_w4}]
methods:
  ltkd_cross: {rebalance: [false, true]}
  ltkd_within: {}
student_baseline: false
seeds: [0, 1]
tables:
  - kind: ablation
    name: cross
    labels: {"LTKD (cross only) (rebalance=False)": Biased, "LTKD (cross only) (rebalance=True)": Ours, ltkd_within: Within}
    delta: true
    reference: "LTKD (cross only) (rebalance=True)"
"""
ABLATION_VALUES = {  # (row, teacher) -> [(tail, all) of seed 0, 1]
    ("LTKD (cross only) (rebalance=False)", "cnn_w16"): [(39, 60), (41, 62)],
    ("LTKD (cross only) (rebalance=True)", "cnn_w16"): [(40.5, 61), (39.5, 63)],  # Tail ties Biased: both bold
    ("LTKD (within only)", "cnn_w16"): [(38, 63.5), (38, 66.5)],
    ("LTKD (cross only) (rebalance=False)", "cnn_w8"): [(20, 50), (22, 52)],
    ("LTKD (cross only) (rebalance=True)", "cnn_w8"): [(25, 51), (26, 52)],
    ("LTKD (within only)", "cnn_w8"): [(21, 50), None],
}

NGROUPS = """
name: golden_ngroups
dataset: {name: digits, gammas: [10]}
pairs: [{teacher: cnn_w16, student: cnn_w4}, {teacher: cnn_w8, student: cnn_w4}]
methods:
  kd: {}
  ltkd: {n_groups: [3, 5, 10]}
  ltkd_continuous: {n_groups: [3, 10]}
student_baseline: false
seeds: [0]
tables: [{kind: ngroups}]
"""


def ngroups_values(t):
    if t.role != "distill" or t.config.method == "kd":
        return {"acc_tail": 1.0, "acc_all": 2.0}
    n = t.config.method_params["n_groups"]
    base = {"cnn_w16": 40.0, "cnn_w8": 30.0}[t.config.teacher]
    bump = {"ltkd": {3: 1.0, 5: 3.0, 10: 1.0}, "ltkd_continuous": {3: 2.0, 10: 0.5}}[t.config.method][n]
    return {"acc_tail": base + bump, "acc_all": 90.0}


# Golden outputs (checked by hand against the numbers above: means, sample stds, marks, Δ).
MAIN_MD = '''\
|         |  cnn_w16→cnn_w4 γ=10 Tail  |  cnn_w16→cnn_w4 γ=10 All  |  cnn_w16→cnn_w4 γ=50 Tail  |  cnn_w16→cnn_w4 γ=50 All  |
|:-------:|:--------------------------:|:-------------------------:|:--------------------------:|:-------------------------:|
| Teacher |        52.00 ± 2.00        |       72.00 ± 2.00        |        22.00 ± 2.00        |       52.00 ± 2.00        |
| Student |        31.00 ± 1.00        |       61.00 ± 1.00        |        6.00 ± 1.00         |       31.00 ± 1.00        |
|   KD    | <u>41.00 ± 1.41 (n=2)</u>  | <u>65.50 ± 0.99 (n=2)</u> |    <u>11.00 ± 1.00</u>     |    <u>41.00 ± 1.00</u>    |
|   DKD   |    <u>41.00 ± 0.87</u>     |       65.00 ± 1.00        |             –              |             –             |
|  LTKD   |      **45.00 ± 1.00**      |     **67.00 ± 1.00**      |      **16.33 ± 1.53**      |     **44.87 ± 1.10**      |
|    Δ    |           +4.00†           |        +1.50 (n=2)        |           +5.33†           |          +3.87†           |
'''


MAIN_LATEX = r'''\begin{table}
\centering
\caption{Top-1 accuracy (\%) on Digits-LT, mean $\pm$ std over 3 seeds. Tail: the third of the classes with the fewest training images; All: all classes. $\Delta$ = LTKD $-$ best other row; $^\dagger$ p $<$ 0.05 (paired t-test over seeds).}
\label{tab:golden_main_main}
\begin{tabular}{lcccc}
\toprule
 & \multicolumn{4}{c}{CNN-w16 $\to$ CNN-w4} \\
 & \multicolumn{2}{c}{$\gamma$=10} & \multicolumn{2}{c}{$\gamma$=50} \\
 & Tail & All & Tail & All \\
\midrule
Teacher & 52.00 $\pm$ 2.00 & 72.00 $\pm$ 2.00 & 22.00 $\pm$ 2.00 & 52.00 $\pm$ 2.00 \\
Student & 31.00 $\pm$ 1.00 & 61.00 $\pm$ 1.00 & 6.00 $\pm$ 1.00 & 31.00 $\pm$ 1.00 \\
\midrule
KD & \underline{41.00 $\pm$ 1.41 (n=2)} & \underline{65.50 $\pm$ 0.99 (n=2)} & \underline{11.00 $\pm$ 1.00} & \underline{41.00 $\pm$ 1.00} \\
DKD & \underline{41.00 $\pm$ 0.87} & 65.00 $\pm$ 1.00 & -- & -- \\
LTKD & \textbf{45.00 $\pm$ 1.00} & \textbf{67.00 $\pm$ 1.00} & \textbf{16.33 $\pm$ 1.53} & \textbf{44.87 $\pm$ 1.10} \\
\midrule
$\Delta$ & +4.00$^\dagger$ & +1.50 (n=2) & +5.33$^\dagger$ & +3.87$^\dagger$ \\
\bottomrule
\end{tabular}
\end{table}
'''


MAIN_HTML = '''\
<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
<style type="text/css">
#T_golden_main_main_row2_col0, #T_golden_main_main_row2_col1, #T_golden_main_main_row2_col2, #T_golden_main_main_row2_col3 {
  text-decoration: underline;
  border-top: 1px solid black;
}
#T_golden_main_main_row3_col0 {
  text-decoration: underline;
}
#T_golden_main_main_row4_col0, #T_golden_main_main_row4_col1, #T_golden_main_main_row4_col2, #T_golden_main_main_row4_col3 {
  font-weight: bold;
}
#T_golden_main_main_row5_col0, #T_golden_main_main_row5_col1, #T_golden_main_main_row5_col2, #T_golden_main_main_row5_col3 {
  border-top: 1px solid black;
}
</style>
</head>
<body>
<table id="T_golden_main_main">
  <caption>Top-1 accuracy (%) on Digits-LT, mean ± std over 3 seeds. Tail: the third of the classes with the fewest training images; All: all classes. Δ = LTKD − best other row; † p &lt; 0.05 (paired t-test over seeds).</caption>
  <thead>
    <tr>
      <th class="blank level0" >&nbsp;</th>
      <th id="T_golden_main_main_level0_col0" class="col_heading level0 col0" colspan="4">cnn_w16→cnn_w4</th>
    </tr>
    <tr>
      <th class="blank level1" >&nbsp;</th>
      <th id="T_golden_main_main_level1_col0" class="col_heading level1 col0" colspan="2">γ=10</th>
      <th id="T_golden_main_main_level1_col2" class="col_heading level1 col2" colspan="2">γ=50</th>
    </tr>
    <tr>
      <th class="blank level2" >&nbsp;</th>
      <th id="T_golden_main_main_level2_col0" class="col_heading level2 col0" >Tail</th>
      <th id="T_golden_main_main_level2_col1" class="col_heading level2 col1" >All</th>
      <th id="T_golden_main_main_level2_col2" class="col_heading level2 col2" >Tail</th>
      <th id="T_golden_main_main_level2_col3" class="col_heading level2 col3" >All</th>
    </tr>
  </thead>
  <tbody>
    <tr>
      <th id="T_golden_main_main_level0_row0" class="row_heading level0 row0" >Teacher</th>
      <td id="T_golden_main_main_row0_col0" class="data row0 col0" >52.00 ± 2.00</td>
      <td id="T_golden_main_main_row0_col1" class="data row0 col1" >72.00 ± 2.00</td>
      <td id="T_golden_main_main_row0_col2" class="data row0 col2" >22.00 ± 2.00</td>
      <td id="T_golden_main_main_row0_col3" class="data row0 col3" >52.00 ± 2.00</td>
    </tr>
    <tr>
      <th id="T_golden_main_main_level0_row1" class="row_heading level0 row1" >Student</th>
      <td id="T_golden_main_main_row1_col0" class="data row1 col0" >31.00 ± 1.00</td>
      <td id="T_golden_main_main_row1_col1" class="data row1 col1" >61.00 ± 1.00</td>
      <td id="T_golden_main_main_row1_col2" class="data row1 col2" >6.00 ± 1.00</td>
      <td id="T_golden_main_main_row1_col3" class="data row1 col3" >31.00 ± 1.00</td>
    </tr>
    <tr>
      <th id="T_golden_main_main_level0_row2" class="row_heading level0 row2" >KD</th>
      <td id="T_golden_main_main_row2_col0" class="data row2 col0" >41.00 ± 1.41 (n=2)</td>
      <td id="T_golden_main_main_row2_col1" class="data row2 col1" >65.50 ± 0.99 (n=2)</td>
      <td id="T_golden_main_main_row2_col2" class="data row2 col2" >11.00 ± 1.00</td>
      <td id="T_golden_main_main_row2_col3" class="data row2 col3" >41.00 ± 1.00</td>
    </tr>
    <tr>
      <th id="T_golden_main_main_level0_row3" class="row_heading level0 row3" >DKD</th>
      <td id="T_golden_main_main_row3_col0" class="data row3 col0" >41.00 ± 0.87</td>
      <td id="T_golden_main_main_row3_col1" class="data row3 col1" >65.00 ± 1.00</td>
      <td id="T_golden_main_main_row3_col2" class="data row3 col2" >–</td>
      <td id="T_golden_main_main_row3_col3" class="data row3 col3" >–</td>
    </tr>
    <tr>
      <th id="T_golden_main_main_level0_row4" class="row_heading level0 row4" >LTKD</th>
      <td id="T_golden_main_main_row4_col0" class="data row4 col0" >45.00 ± 1.00</td>
      <td id="T_golden_main_main_row4_col1" class="data row4 col1" >67.00 ± 1.00</td>
      <td id="T_golden_main_main_row4_col2" class="data row4 col2" >16.33 ± 1.53</td>
      <td id="T_golden_main_main_row4_col3" class="data row4 col3" >44.87 ± 1.10</td>
    </tr>
    <tr>
      <th id="T_golden_main_main_level0_row5" class="row_heading level0 row5" >Δ</th>
      <td id="T_golden_main_main_row5_col0" class="data row5 col0" >+4.00†</td>
      <td id="T_golden_main_main_row5_col1" class="data row5 col1" >+1.50 (n=2)</td>
      <td id="T_golden_main_main_row5_col2" class="data row5 col2" >+5.33†</td>
      <td id="T_golden_main_main_row5_col3" class="data row5 col3" >+3.87†</td>
    </tr>
  </tbody>
</table>
</body>
</html>
'''


MAIN_CSV_WITHOUT_RUN_IDS = '''\
table,kind,row,pair,gamma,group,n_groups,metric,mean,std,n,expected,seeds,p_value,versus,mark
main,main,Teacher,cnn_w16→cnn_w4,10,Tail,,acc_tail,52,2,3,3,0 1 2,,,
main,main,Teacher,cnn_w16→cnn_w4,10,All,,acc_all,72,2,3,3,0 1 2,,,
main,main,Teacher,cnn_w16→cnn_w4,50,Tail,,acc_tail,22,2,3,3,0 1 2,,,
main,main,Teacher,cnn_w16→cnn_w4,50,All,,acc_all,52,2,3,3,0 1 2,,,
main,main,Student,cnn_w16→cnn_w4,10,Tail,,acc_tail,31,1,3,3,0 1 2,,,
main,main,Student,cnn_w16→cnn_w4,10,All,,acc_all,61,1,3,3,0 1 2,,,
main,main,Student,cnn_w16→cnn_w4,50,Tail,,acc_tail,6,1,3,3,0 1 2,,,
main,main,Student,cnn_w16→cnn_w4,50,All,,acc_all,31,1,3,3,0 1 2,,,
main,main,KD,cnn_w16→cnn_w4,10,Tail,,acc_tail,41,1.41421,2,3,0 1,,,second
main,main,KD,cnn_w16→cnn_w4,10,All,,acc_all,65.5,0.989949,2,3,0 1,,,second
main,main,KD,cnn_w16→cnn_w4,50,Tail,,acc_tail,11,1,3,3,0 1 2,,,second
main,main,KD,cnn_w16→cnn_w4,50,All,,acc_all,41,1,3,3,0 1 2,,,second
main,main,DKD,cnn_w16→cnn_w4,10,Tail,,acc_tail,41,0.866025,3,3,0 1 2,,,second
main,main,DKD,cnn_w16→cnn_w4,10,All,,acc_all,65,1,3,3,0 1 2,,,
main,main,DKD,cnn_w16→cnn_w4,50,Tail,,acc_tail,,,0,3,,,,
main,main,DKD,cnn_w16→cnn_w4,50,All,,acc_all,,,0,3,,,,
main,main,LTKD,cnn_w16→cnn_w4,10,Tail,,acc_tail,45,1,3,3,0 1 2,,,best
main,main,LTKD,cnn_w16→cnn_w4,10,All,,acc_all,67,1,3,3,0 1 2,,,best
main,main,LTKD,cnn_w16→cnn_w4,50,Tail,,acc_tail,16.3333,1.52753,3,3,0 1 2,,,best
main,main,LTKD,cnn_w16→cnn_w4,50,All,,acc_all,44.8667,1.09697,3,3,0 1 2,,,best
main,main,Δ,cnn_w16→cnn_w4,10,Tail,,acc_tail,4,0.5,3,3,0 1 2,0.00516799,DKD,
main,main,Δ,cnn_w16→cnn_w4,10,All,,acc_all,1.5,0.282843,2,3,0 1,0.125666,KD,
main,main,Δ,cnn_w16→cnn_w4,50,Tail,,acc_tail,5.33333,0.57735,3,3,0 1 2,0.00388351,KD,
main,main,Δ,cnn_w16→cnn_w4,50,All,,acc_all,3.86667,0.321455,3,3,0 1 2,0.00229587,KD,
'''


ABLATION_MD = '''\
|        |  cnn_w16→cnn_w4 Tail  |  cnn_w16→cnn_w4 All  |  cnn_w8→cnn_w4 Tail  |  cnn_w8→cnn_w4 All  |
|:------:|:---------------------:|:--------------------:|:--------------------:|:-------------------:|
| Biased |   **40.00 ± 1.41**    |     61.00 ± 1.41     | <u>21.00 ± 1.41</u>  | <u>51.00 ± 1.41</u> |
|  Ours  |   **40.00 ± 0.71**    | <u>62.00 ± 1.41</u>  |   **25.50 ± 0.71**   |  **51.50 ± 0.71**   |
| Within |  <u>38.00 ± 0.00</u>  |   **65.00 ± 2.12**   |  <u>21.00 (n=1)</u>  |     50.00 (n=1)     |
|   Δ    |         +0.00         |        -3.00         |        +4.50         |        +0.50        |
'''


NGROUPS_MD = '''\
|                |  LTKD n(G)=3  |  LTKD n(G)=5  |  LTKD n(G)=10  |  LTKD (continuous reweighting) n(G)=3  |  LTKD (continuous reweighting) n(G)=10  |
|:--------------:|:-------------:|:-------------:|:--------------:|:--------------------------------------:|:---------------------------------------:|
| cnn_w16→cnn_w4 | <u>41.00</u>  |   **43.00**   |  <u>41.00</u>  |               **42.00**                |              <u>40.50</u>               |
| cnn_w8→cnn_w4  | <u>31.00</u>  |   **33.00**   |  <u>31.00</u>  |               **32.00**                |              <u>30.50</u>               |
'''


NGROUPS_CSV_WITHOUT_RUN_IDS = '''\
table,kind,row,pair,gamma,group,n_groups,metric,mean,std,n,expected,seeds,p_value,versus,mark
ngroups,ngroups,LTKD,cnn_w16→cnn_w4,10,Tail,3,acc_tail,41,,1,1,0,,,second
ngroups,ngroups,LTKD,cnn_w16→cnn_w4,10,Tail,5,acc_tail,43,,1,1,0,,,best
ngroups,ngroups,LTKD,cnn_w16→cnn_w4,10,Tail,10,acc_tail,41,,1,1,0,,,second
ngroups,ngroups,LTKD (continuous reweighting),cnn_w16→cnn_w4,10,Tail,3,acc_tail,42,,1,1,0,,,best
ngroups,ngroups,LTKD (continuous reweighting),cnn_w16→cnn_w4,10,Tail,10,acc_tail,40.5,,1,1,0,,,second
ngroups,ngroups,LTKD,cnn_w8→cnn_w4,10,Tail,3,acc_tail,31,,1,1,0,,,second
ngroups,ngroups,LTKD,cnn_w8→cnn_w4,10,Tail,5,acc_tail,33,,1,1,0,,,best
ngroups,ngroups,LTKD,cnn_w8→cnn_w4,10,Tail,10,acc_tail,31,,1,1,0,,,second
ngroups,ngroups,LTKD (continuous reweighting),cnn_w8→cnn_w4,10,Tail,3,acc_tail,32,,1,1,0,,,best
ngroups,ngroups,LTKD (continuous reweighting),cnn_w8→cnn_w4,10,Tail,10,acc_tail,30.5,,1,1,0,,,second
'''


def run_ids_by_trial(uri: str, name: str) -> dict[str, str]:
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(name)
    return {r.data.tags["config_hash"]: r.info.run_id for r in client.search_runs([exp.experiment_id], max_results=1000)}


def test_main_table_golden_md_latex_html(main_table):
    _, _, table = main_table
    assert render(table, "md") + "\n" == MAIN_MD
    assert render(table, "latex") == MAIN_LATEX
    assert render(table, "html") == MAIN_HTML


def test_main_table_golden_csv_and_run_ids(main_table):
    uri, path, table = main_table
    import io

    csv = pd.read_csv(io.StringIO(render(table, "csv")), dtype=str, keep_default_na=False)
    assert csv.drop(columns="run_ids").to_csv(index=False, lineterminator="\n") == MAIN_CSV_WITHOUT_RUN_IDS
    # Each cell names exactly the runs it averages (seed order); a Δ cell those of both rows compared.
    ids = run_ids_by_trial(uri, "golden_main")
    trials = expand(parse_study(yaml.safe_load(path.read_text())))
    expected = {}
    for (row, gamma), _ in MAIN_VALUES.items():
        cell = sorted((t for t in trials if t.row == row and t.config.gamma == gamma), key=lambda t: t.config.seed)
        expected[(row, gamma)] = " ".join(ids[t.config_hash] for t in cell if t.config_hash in ids)
    for r in csv.itertuples():
        gamma = int(r.gamma)
        if r.row == "Δ":
            assert r.run_ids == expected[("LTKD", gamma)] + " " + expected[(r.versus, gamma)]
        else:
            assert r.run_ids == expected[(r.row, gamma)]


def test_delta_equals_paired_t_test(main_table):
    """Δ = LTKD mean − best baseline mean; p = scipy.stats.ttest_rel on the seeds both rows have."""
    _, _, table = main_table
    for gamma, group, idx, best, seeds in ((10, "Tail", 0, "DKD", [0, 1, 2]), (10, "All", 1, "KD", [0, 1]),
                                           (50, "Tail", 0, "KD", [0, 1, 2]), (50, "All", 1, "KD", [0, 1, 2])):
        col = ("cnn_w16→cnn_w4", f"γ={gamma}", group)
        ltkd = [MAIN_VALUES[("LTKD", gamma)][s][idx] for s in seeds]
        base = [MAIN_VALUES[(best, gamma)][s][idx] for s in seeds]
        all_ltkd = [v[idx] for v in MAIN_VALUES[("LTKD", gamma)]]
        all_base = [v[idx] for v in MAIN_VALUES[(best, gamma)] if v is not None]
        cell = table.cell("Δ", col)
        assert cell.versus == best and cell.n == len(seeds)
        assert cell.delta == pytest.approx(statistics.mean(all_ltkd) - statistics.mean(all_base), abs=1e-12)
        assert cell.p_value == pytest.approx(ttest_rel(ltkd, base).pvalue, rel=1e-12)
        assert cell.text().startswith(f"{cell.delta:+.2f}") and (("†" in cell.text()) == (cell.p_value < 0.05))
    # and the CSV carries the same p-values
    frame = table.frame()
    delta = frame[frame["row"] == "Δ"]
    assert list(delta["p_value"]) == [table.cell("Δ", c).p_value for c in table.cols]


def test_marks_bold_best_underline_second_ties_share(main_table):
    _, _, table = main_table
    marks = table.marks()
    tail10 = ("cnn_w16→cnn_w4", "γ=10", "Tail")
    assert marks[tail10].to_dict() == {"Teacher": "", "Student": "", "KD": "second", "DKD": "second", "LTKD": "best", "Δ": ""}
    all10 = ("cnn_w16→cnn_w4", "γ=10", "All")
    assert marks[all10].to_dict() == {"Teacher": "", "Student": "", "KD": "second", "DKD": "", "LTKD": "best", "Δ": ""}
    # the Teacher is the highest value of every column but is never marked
    assert all(m == "" for m in marks.loc["Teacher"])


def test_ablation_ties_for_best_both_bold(store):
    uri, folder = store

    def values(t):
        if t.role == "teacher":
            return {"acc_tail": 99.0, "acc_all": 99.0}
        v = ABLATION_VALUES[(t.row, t.config.teacher)][t.config.seed]
        return None if v is None else {"acc_tail": v[0], "acc_all": v[1]}

    path, _ = fill(uri, folder, ABLATION, values)
    (table,) = tables_of(uri, path)
    assert render(table, "md") + "\n" == ABLATION_MD
    assert table.cols[0] == ("cnn_w16→cnn_w4", "Tail")  # one γ: no γ column level
    # Δ on a tie for the best baseline (Biased and Ours both 40.00): Ours − Biased, p from the same seeds
    cell = table.cell("Δ", ("cnn_w16→cnn_w4", "Tail"))
    assert cell.versus == "Biased" and cell.p_value == pytest.approx(ttest_rel([40.5, 39.5], [39, 41]).pvalue)


def test_ngroups_table_golden(store):
    uri, folder = store
    path, _ = fill(uri, folder, NGROUPS, ngroups_values)
    (table,) = tables_of(uri, path)
    import io

    assert render(table, "md") + "\n" == NGROUPS_MD
    csv = pd.read_csv(io.StringIO(render(table, "csv")), dtype=str, keep_default_na=False)
    assert csv.drop(columns="run_ids").to_csv(index=False, lineterminator="\n") == NGROUPS_CSV_WITHOUT_RUN_IDS
    assert "KD" not in render(table, "md").replace("LTKD", "")  # kd has no n(G): not in the table


def test_cli_prints_tables_and_lists_missing_cells(main_table, capsys):
    uri, path, _ = main_table
    assert main(["tables", str(path), "--tracking-uri", uri]) == 0
    out, err = capsys.readouterr()
    assert MAIN_MD.strip() in out and out.startswith("golden_main: main — Top-1 accuracy (%) on Digits-LT")
    assert err.splitlines() == [
        "main: 2 cells short of seeds (shown as – or with (n=…)):",
        "  KD / cnn_w16→cnn_w4 / γ=10: 2 of 3 seeds",
        "  DKD / cnn_w16→cnn_w4 / γ=50: 0 of 3 seeds",
    ]
    assert main(["tables", str(path), "--tracking-uri", uri, "--format", "csv"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("table,kind,row,pair,gamma,group,n_groups,metric,mean,std,n,expected")
    assert len(out.splitlines()) == 1 + 6 * 4


def _run_on_a_terminal(argv: list[str], env: dict, columns: int) -> str:
    """What `argv` prints to a pseudo-terminal `columns` wide (stdout and stderr both on it), as a person at a
    terminal sees it."""
    import fcntl
    import os
    import pty
    import struct
    import subprocess
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    proc = subprocess.Popen(argv, stdin=follower, stdout=follower, stderr=follower, env=env, close_fds=True)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the program ended and closed its side
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert proc.wait(timeout=120) == 0, b"".join(chunks).decode(errors="replace")
    return b"".join(chunks).decode()


def test_cli_on_a_terminal_draws_a_plain_table_with_the_marks_as_bold_and_underline(main_table):
    import os
    import sys

    uri, path, _ = main_table
    env = {**os.environ, "TERM": "xterm-256color"}
    for name in ("NO_COLOR", "COLUMNS", "LINES"):
        env.pop(name, None)
    ltkd = str(Path(sys.executable).with_name("ltkd"))
    shown = _run_on_a_terminal([ltkd, "tables", str(path), "--tracking-uri", uri], env, columns=60)
    assert "**" not in shown and "<u>" not in shown and "|:" not in shown  # no Markdown
    plain = re.sub(r"\x1b\[[0-9;]*m", "", shown)
    assert "golden_main: main" in plain and "Bold: best; underlined: second best" in " ".join(plain.split())  # the caption wraps
    # 60 columns hold three of the four columns: the fourth comes in a second block, no value broken or cut
    assert max(len(line) for line in plain.splitlines()) <= 60
    rows: dict[str, list[str]] = {}
    for line in plain.splitlines():
        if line.split()[:1] and line.split()[0] in ("Teacher", "KD", "LTKD", "Δ"):
            rows.setdefault(line.split()[0], []).extend(line.split()[1:])
    assert rows["LTKD"] == ["45.00", "±", "1.00", "67.00", "±", "1.00", "16.33", "±", "1.53", "44.87", "±", "1.10"]
    assert rows["Δ"] == ["+4.00†", "+1.50", "(n=2)", "+5.33†", "+3.87†"]
    assert plain.count("golden_main: main") == 1 and plain.count("Top-1 accuracy") == 1
    assert "\x1b[1m45.00 ± 1.00" in shown and "\x1b[4m41.00 ± 1.41 (n=2)" in shown  # best bold, second underlined
    assert "\x1b[1m52.00" not in shown  # the Teacher, highest in its column, is never marked
    assert "main: 2 cells short of seeds (shown as – or with (n=…)):" in plain


def test_cli_out_writes_every_format_notes_skipped_plots_and_logs_a_tables_run(main_table, tmp_path, capsys):
    uri, path, _ = main_table
    tracker = Tracker(uri)
    exp = tracker.experiment_id("golden_main")
    before = tracker.finished_by_hash(exp)
    for _ in range(2):  # a second --out reuses the same `tables` run
        assert main(["tables", str(path), "--tracking-uri", uri, "--out", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    names = {f"golden_main_main.{ext}" for ext in ("md", "tex", "csv", "html")}
    assert names <= {p.name for p in tmp_path.iterdir()}
    assert (tmp_path / "golden_main_main.tex").read_text() == MAIN_LATEX
    assert (tmp_path / "golden_main_main.md").read_text().endswith("\n\n" + MAIN_MD)
    # the fixture runs have no per-class artifact and no pg_* metrics: the plots are skipped, with a note
    assert "per-class plot skipped" in err and "teacher group-probability plot skipped" in err
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([exp], "tags.role = 'tables'")
    assert len(runs) == 1 and runs[0].info.run_name == "tables golden_main" and runs[0].info.status == "FINISHED"
    assert "config_hash" not in runs[0].data.tags
    report = {"golden_main_report.html", "golden_main_report.md"}  # ltkd report's page, written with the tables
    assert {f.path for f in client.list_artifacts(runs[0].info.run_id, "tables")} == {f"tables/{n}" for n in names | report}
    # the planner does not see it
    assert tracker.finished_by_hash(exp).keys() == before.keys()


def test_the_sweeps_refresher_says_where_the_tables_are(main_table, tmp_path):
    """The sweep's regenerations: the periodic ones name the tables run; the last one (with the plots) also
    how to get them as files, never the internal folder the sweep writes them to."""
    from orchestrator.tables.regenerate import TablesRefresher

    uri, path, _ = main_table
    study = load_study(path)
    tracker = Tracker(uri)
    notes: list[str] = []
    refresher = TablesRefresher(study, expand(study), tracker, tracker.experiment_id(study.name), tmp_path / "internal",
                                every_s=0, note=notes.append)
    (tmp_path / "internal").mkdir()
    assert refresher.refresh(plots=False, only_if_new=True).runs == 26
    assert refresher.refresh(plots=False, only_if_new=True) is None  # nothing new: not regenerated
    refresher.close()
    assert notes == [
        "tables: regenerated from 26 runs (2 cells short of seeds), in MLflow run 'tables golden_main'",
        "tables: regenerated from 26 runs (2 cells short of seeds), in MLflow run 'tables golden_main' (artifacts under "
        "tables/); `ltkd tables STUDY.yaml --out DIR` writes them to a folder",
    ]
    named = TablesRefresher(study, expand(study), tracker, tracker.experiment_id(study.name), tmp_path / "internal", every_s=0,
                            note=notes.append, files_command="ltkd tables studies/golden.yaml --tracking-uri sqlite:///x.db --out DIR")
    named.close()
    assert notes[-1].endswith("`ltkd tables studies/golden.yaml --tracking-uri sqlite:///x.db --out DIR` writes them to a folder")


def test_fast_reader_matches_search_runs(main_table):
    uri, _, _ = main_table
    tracker = Tracker(uri)
    exp = tracker.experiment_id("golden_main")
    slow, fast = tracker.finished_by_hash(exp), tracker.final_metrics_by_hash(exp)
    assert slow.keys() == fast.keys()
    for h, rec in slow.items():
        assert (fast[h].run_id, fast[h].metrics, fast[h].artifact_uri) == (rec.run_id, rec.metrics, rec.artifact_uri)


def test_tables_without_runs_exit_2_with_one_line(store, tmp_path, capsys):
    uri, folder = store
    path = tmp_path / "nothing.yaml"
    path.write_text(MAIN.replace("golden_main", "nothing_run"))
    for where in (uri, f"sqlite:///{tmp_path}/absent.db"):
        assert main(["tables", str(path), "--tracking-uri", where]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("ltkd: error: ") and "no runs of study 'nothing_run' to tabulate" in err
    assert not (tmp_path / "absent.db").exists()
    # an experiment whose runs are not FINISHED counts as no runs
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("nothing_run")
    client.create_run(exp, tags={"config_hash": expand(parse_study(yaml.safe_load(MAIN)))[0].config_hash})
    assert main(["tables", str(path), "--tracking-uri", uri]) == 2
    assert capsys.readouterr().err.count("\n") == 1


BALSOFT = """
name: golden_balsoftmax
dataset: {name: digits, gammas: [10]}
pairs: [{teacher: cnn_w16, student: cnn_w4}]
methods:
  balanced_softmax: {}
  kd: {ce: [standard, balanced_softmax]}
  ltkd: {ce: [standard, balanced_softmax]}
seeds: [0, 1, 2]
tables:
  - {kind: main, name: main}
  - kind: main
    name: balsoftmax
    rows: [Student, balanced_softmax, KD + BalSoftmax, LTKD, LTKD + BalSoftmax]
    delta:
      - {row: LTKD + BalSoftmax}
      - {row: LTKD + BalSoftmax, versus: balanced_softmax}
      - {row: LTKD + BalSoftmax, versus: KD + BalSoftmax}
"""
BALSOFT_VALUES = {  # row -> [(acc_tail, acc_all) of seed 0, 1, 2]
    "Teacher": [(60, 80), (61, 81), (62, 82)],
    "Student": [(20, 60), (22, 61), (21, 62)],
    "Balanced Softmax": [(40, 68), (42, 68.5), (41, 69)],
    "KD": [(25, 63), (27, 64), (26, 62)],
    "KD + BalSoftmax": [(43, 67), (44, 68), (45, 66)],
    "LTKD": [(38, 65), (39, 66), (40, 64)],
    "LTKD + BalSoftmax": [(46, 68), (45, 69.5), (47, 67)],
}
# Checked by hand: Δ = LTKD + BalSoftmax − the best other method row (Tail: KD + BalSoftmax 44.00;
# All: Balanced Softmax 68.50); † against Balanced Softmax on Tail (diffs 6, 3, 6: p = 0.038) and
# against KD + BalSoftmax on All (diffs 1, 1.5, 1: p = 0.020), not on Tail (diffs 3, 1, 2: p = 0.074).
BALSOFT_MD = '''\
|                       |  cnn_w16→cnn_w4 γ=10 Tail  |  cnn_w16→cnn_w4 γ=10 All  |
|:---------------------:|:--------------------------:|:-------------------------:|
|        Student        |        21.00 ± 1.00        |       61.00 ± 1.00        |
|   Balanced Softmax    |        41.00 ± 1.00        |     **68.50 ± 0.50**      |
|    KD + BalSoftmax    |    <u>44.00 ± 1.00</u>     |       67.00 ± 1.00        |
|         LTKD          |        39.00 ± 1.00        |       65.00 ± 1.00        |
|   LTKD + BalSoftmax   |      **46.00 ± 1.00**      |    <u>68.17 ± 1.26</u>    |
|           Δ           |           +2.00            |           -0.33           |
| Δ vs Balanced Softmax |           +5.00†           |           -0.33           |
| Δ vs KD + BalSoftmax  |           +2.00            |          +1.17†           |
'''


def test_ce_grid_gives_readable_rows_and_is_part_of_the_identity():
    trials = expand(parse_study(yaml.safe_load(BALSOFT)))
    assert list(dict.fromkeys(t.row for t in trials)) == list(BALSOFT_VALUES)
    by = {(t.row, t.config.seed): t for t in trials}
    kd, kd_bal = by[("KD", 0)], by[("KD + BalSoftmax", 0)]
    assert (kd.config.method, kd_bal.config.method) == ("kd", "kd")
    assert (kd.config.method_params["ce"], kd_bal.config.method_params["ce"]) == ("standard", "balanced_softmax")
    assert kd.config_hash != kd_bal.config_hash and kd.teacher_hash == kd_bal.teacher_hash
    assert kd_bal.run_name == "kd + BalSoftmax cnn_w16>cnn_w4 g10 s0"
    # `ce: standard`, given or left out, keeps the identity trials had before the option existed (pinned
    # from the code before it), so rerunning an older study finds its runs; any other value is new.
    plain = "name: ident\ndataset: {name: digits, gammas: [10]}\npairs: [{teacher: cnn_w16, student: cnn_w4}]\nseeds: [0]\n"
    before = {"KD": "2b4b41542074e4bb", "LTKD": "e44dea446d24785c", "DKD": "c98ee64da3fce1f1", "BKD": "46362dfea8e2bb5b"}
    for ce in (None, "standard", "balanced_softmax"):
        params = {} if ce is None else {"ce": ce}
        study = yaml.safe_load(plain) | {"methods": {m: dict(params) for m in ("kd", "ltkd", "dkd", "bkd")}}
        hashes = {t.row.removesuffix(" + BalSoftmax"): t.config_hash for t in expand(parse_study(study)) if t.role == "distill"}
        assert (hashes == before) == (ce != "balanced_softmax") and not set(hashes.values()) & (set(before.values()) if ce == "balanced_softmax" else set())


def test_delta_against_a_named_reference(store):
    uri, folder = store

    def values(t):
        v = BALSOFT_VALUES[t.row][t.config.seed]
        return {"acc_tail": v[0], "acc_all": v[1]}

    path, _ = fill(uri, folder, BALSOFT, values)
    main_table, table = tables_of(uri, path)
    assert render(table, "md") + "\n" == BALSOFT_MD
    assert table.title.endswith(" Δ = LTKD + BalSoftmax − best other row; Δ vs Balanced Softmax = LTKD + BalSoftmax − "
                                "Balanced Softmax; Δ vs KD + BalSoftmax = LTKD + BalSoftmax − KD + BalSoftmax; "
                                "† p < 0.05 (paired t-test over seeds).")
    ref = BALSOFT_VALUES["LTKD + BalSoftmax"]
    for label, group, idx, versus in (("Δ", "Tail", 0, "KD + BalSoftmax"), ("Δ", "All", 1, "Balanced Softmax"),
                                      ("Δ vs Balanced Softmax", "Tail", 0, "Balanced Softmax"),
                                      ("Δ vs Balanced Softmax", "All", 1, "Balanced Softmax"),
                                      ("Δ vs KD + BalSoftmax", "Tail", 0, "KD + BalSoftmax"),
                                      ("Δ vs KD + BalSoftmax", "All", 1, "KD + BalSoftmax")):
        cell = table.cell(label, ("cnn_w16→cnn_w4", "γ=10", group))
        a, b = [v[idx] for v in ref], [v[idx] for v in BALSOFT_VALUES[versus]]
        assert cell.versus == versus and cell.n == 3 and cell.is_delta
        assert cell.delta == pytest.approx(statistics.mean(a) - statistics.mean(b), abs=1e-12)
        assert cell.p_value == pytest.approx(ttest_rel(a, b).pvalue, rel=1e-12)
    frame = table.frame()
    assert list(frame[frame["versus"] != ""]["row"].unique()) == ["Δ", "Δ vs Balanced Softmax", "Δ vs KD + BalSoftmax"]
    assert table.missing() == []
    # The default main table: every row, and Δ for the plain LTKD row ("ltkd" names it beside LTKD + BalSoftmax).
    assert main_table.rows == ["Teacher", *list(BALSOFT_VALUES)[1:], "Δ"]
    assert "Δ = LTKD − best other row" in main_table.title
    assert main_table.cell("Δ", ("cnn_w16→cnn_w4", "γ=10", "Tail")).versus == "LTKD + BalSoftmax"


@pytest.mark.parametrize("tables, message", [
    ([{"kind": "ablation", "rows": ["bkd"]}], "tables.0 (ablation): rows: 'bkd' is not one of this study's methods and rows"),
    ([{"kind": "main", "metric": "acc_all"}], "tables.0: metric is for ngroups tables"),
    ([{"kind": "ngroups", "rows": ["kd"]}], "tables.0 (ngroups): rows: 'kd' is not one of this study's methods with an n_groups"),
    ([{"kind": "ablation", "delta": True, "reference": "Teacher"}], "reference 'Teacher' (the row Δ is computed for) matches no method row"),
    ([{"kind": "main", "labels": {"XX": "y"}}], "tables.0 (main): labels: 'XX' is not a row of this table"),
    ([{"name": "t"}, {"name": "t"}], "tables.1.name = 't': two tables with one name"),
    ([{"kind": "main", "colour": "red"}], "tables.0.colour: unknown key"),
    ([{"kind": "ngroups", "delta": True}], "delta and reference are for main and ablation tables"),
    ([{"kind": "main", "delta": {"row": "LTKD", "versus": "bkd"}}],
     "tables.0 (main): delta: versus 'bkd' matches no row of this table besides 'LTKD' (the row Δ is computed for); "
     "allowed: best_other, Teacher, Student, KD, DKD"),
    ([{"kind": "main", "delta": [{"row": "ltkd"}, {"row": "ltkd", "versus": "kd", "label": "Δ"}]}],
     "tables.0 (main): delta: two rows would show as 'Δ'; give the Δ row a label"),
    ([{"kind": "main", "delta": {"row": "ltkd", "versis": "kd"}}], "tables.0.delta: entry 0: versis: unknown key"),
    ([{"kind": "main", "delta": {"row": "kdd"}}], "reference 'kdd' (the row Δ is computed for) matches no method row"),
])
def test_bad_table_specs_are_refused_in_one_line(tables, message, tmp_path, capsys):
    data = yaml.safe_load(MAIN)
    data["tables"] = tables
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False))
    assert main(["sweep", str(path), "--dry-run", "--tracking-uri", f"sqlite:///{tmp_path}/x.db"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_every_study_file_validates_and_each_table_kind_has_a_smoke_twin():
    kinds = {}
    for path in sorted((REPO / "studies").glob("*.yaml")):
        study = load_study(path, search_results_needed=False)  # no data needed
        assert expand(study)
        if path.stem.endswith("_smoke") and study.search is None:  # search_smoke's paper-scale twin: cifar100_lt_search
            assert (REPO / "studies" / f"{path.stem.removesuffix('_smoke')}.yaml").exists()
            kinds.update({t.kind: path.stem for t in study.tables})
    assert set(kinds) == {"main", "ablation", "ngroups"}


@pytest.mark.integration
def test_smallest_smoke_twin_end_to_end_writes_pngs(ray_local, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the SQLite store's artifacts go to ./mlruns
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    study = str(REPO / "studies" / "tinyimagenet_lt_main_smoke.yaml")
    assert main(["sweep", study, "--tracking-uri", uri]) == 0
    out_dir = tmp_path / "out"
    assert main(["tables", study, "--tracking-uri", uri, "--out", str(out_dir)]) == 0
    out, err = capsys.readouterr()
    assert "tinyimagenet_lt_main_smoke: main" in out and "Δ" in out
    pngs = sorted(p.name for p in out_dir.glob("*.png"))
    assert pngs == ["tinyimagenet_lt_main_smoke_main_per_class.png", "tinyimagenet_lt_main_smoke_main_teacher_group_prob.png"], err
    for p in out_dir.glob("*.png"):
        assert p.stat().st_size > 1000 and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cells = pd.read_csv(out_dir / "tinyimagenet_lt_main_smoke_main.csv")
    assert (cells[cells["row"] != "Δ"]["n"] == 2).all()
    # the tables run is not a trial: a rerun of the sweep still finds nothing to do
    assert main(["sweep", study, "--tracking-uri", uri]) == 0
    assert "nothing to run" in capsys.readouterr().out


def test_paired_t_pvalue_equals_scipy_ttest_rel():
    import random
    import warnings

    from orchestrator.tables.core import paired_t_pvalue

    rng = random.Random(0)
    for n in (2, 3, 5, 10):
        for _ in range(50):
            a = [rng.uniform(0, 100) for _ in range(n)]
            b = [x + rng.gauss(rng.uniform(-5, 5), 3) for x in a]
            assert paired_t_pvalue([x - y for x, y in zip(a, b)]) == pytest.approx(ttest_rel(a, b).pvalue, rel=1e-9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert paired_t_pvalue([1.0, 1.0, 1.0]) == ttest_rel([2, 3, 4], [1, 2, 3]).pvalue == 0.0
        assert math.isnan(paired_t_pvalue([0.0, 0.0])) and math.isnan(ttest_rel([1, 2], [1, 2]).pvalue)


LEFTOVER = """
name: leftover_tables
dataset: {name: digits, gammas: [10]}
pairs: [{teacher: cnn_w16, student: cnn_w4}]
methods: {kd: {}, ltkd: {}}
seeds: [0]
tables:
  - {kind: main, title: "<b>bold</b> & title", labels: {ltkd: "<script>alert('x')</script>"}}
"""


def _leftover_values(t):
    return {"acc_tail": 40 + t.config.seed, "acc_all": 60.0}


def test_a_tables_run_left_running_by_a_killed_sweep_is_regenerated_by_the_next(store, tmp_path, capsys, monkeypatch):
    """Every trial is FINISHED; the study's `tables` run was left RUNNING (the state a sweep killed while it regenerated
    its final tables leaves). The next sweep has nothing to train, yet regenerates the tables into that run, FINISHED."""
    uri, folder = store
    monkeypatch.setenv("HOME", str(tmp_path))
    path, _ = fill(uri, folder, LEFTOVER, _leftover_values)
    assert main(["tables", str(path), "--tracking-uri", uri, "--out", str(tmp_path / "t")]) == 0
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("leftover_tables").experiment_id
    (run,) = client.search_runs([exp], "tags.role = 'tables'")
    client.update_run(run.info.run_id, status="RUNNING")
    capsys.readouterr()
    assert main(["sweep", str(path), "--tracking-uri", uri, "--storage", str(tmp_path / "st")]) == 0
    out = capsys.readouterr().out
    assert "nothing to run: every trial has a FINISHED run" in out
    assert ("tables: run 'tables leftover_tables' was left RUNNING by a regeneration that died; regenerated from 4 runs "
            "(0 cells short of seeds)") in out
    (after,) = client.search_runs([exp], "tags.role = 'tables'")
    assert after.info.run_id == run.info.run_id and after.info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(run.info.run_id, "tables")} >= {"tables/leftover_tables_main.md"}
    # A sweep after that finds nothing left RUNNING and says nothing about the tables.
    assert main(["sweep", str(path), "--tracking-uri", uri, "--storage", str(tmp_path / "st")]) == 0
    assert "was left RUNNING" not in capsys.readouterr().out


def test_report_and_html_tables_escape_labels_and_titles(store, tmp_path, capsys):
    """Labels and titles come from the study file; the shared HTML report and the HTML tables show them as text."""
    uri, folder = store
    path = folder / "leftover_tables.yaml"
    if not path.exists():
        fill(uri, folder, LEFTOVER, _leftover_values)
    assert main(["report", str(path), "--tracking-uri", uri, "--out", str(tmp_path / "r"), "--no-log"]) == 0
    assert main(["tables", str(path), "--tracking-uri", uri, "--out", str(tmp_path / "t"), "--no-log"]) == 0
    for page in (tmp_path / "r" / "leftover_tables_report.html", tmp_path / "t" / "leftover_tables_main.html"):
        text = page.read_text()
        assert "<script>" not in text and "<b>bold</b>" not in text, page
        assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in text or "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in text
        assert "&lt;b&gt;bold&lt;/b&gt; &amp; title" in text
