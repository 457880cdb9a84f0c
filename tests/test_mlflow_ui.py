"""What a researcher sees: a swept study in the real MLflow UI, opened in headless Chromium.

`mlflow server` (lean form, loopback) over a store that `ltkd sweep` filled and `ltkd tables --out`
logged to; Chromium renders each page (`--dump-dom` after the page's scripts ran, `--screenshot`
for the record under the test's temporary folder). The checks read the DOM, never pixels.
Without Chromium these tests fail with the command that installs it (`make test` installs Debian's);
the rest of the suite still runs. With LTKD_DOCS_SCREENSHOTS=1 each page's screenshot is also copied to
docs/mlflow-<page>.png, the pictures the documentation shows.
"""
import os
import re
import shutil
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.cli import main
from orchestrator.tracking import experiment_url
from orchestrator.tracking.layout import SUMMARY_METRICS
from conftest import start_mlflow_server, stop

pytestmark = pytest.mark.integration

DOCS = Path(__file__).resolve().parents[1] / "docs"
BROWSER = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


@pytest.fixture(autouse=True, scope="module")  # module scope: checked before the module's sweep fixture
def _needs_chromium():
    # A missing browser is a broken setup, not a reason to pass; failing here (not at import) keeps
    # the other test files running.
    if BROWSER is None:
        pytest.fail("no Chromium on this machine: `apt-get install -y chromium` (make test installs it)", pytrace=False)

STUDY = """
name: ui
description: "digits-LT, cnn_w16 → cnn_w4: LTKD at γ 50, mean ± std over seeds"
dataset: {name: digits, gammas: [50]}
pairs: [{teacher: cnn_w16, student: cnn_w4}]
methods:
  ltkd: {alpha: 1.0, beta: 1.0, temperature: 4.0, n_groups: 3}
student_baseline: false
seeds: [0, 1]
recipe: {epochs: 2, batch_size: 64, lr: 0.05, milestones: [1]}
resources: {cpu: 1}
tables: [{kind: main, name: main}]
"""


def page(url: str, tmp: Path, shot: str, budget_ms: int = 12000) -> str:
    """The DOM of `url` once its scripts ran (Chromium's virtual time), and a screenshot of it."""
    def browser(profile: Path) -> list[str]:  # a fresh browser: nothing remembered from an earlier visit
        shutil.rmtree(profile, ignore_errors=True)
        return [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                f"--user-data-dir={profile}", "--window-size=1440,900", f"--virtual-time-budget={budget_ms}", "--hide-scrollbars"]

    # The screenshot and the DOM from two browsers at once (a profile serves one browser at a time).
    shooter = subprocess.Popen([*browser(tmp / "chromium-shot"), f"--screenshot={tmp / shot}", url],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        dom = subprocess.run([*browser(tmp / "chromium-dom"), "--dump-dom", url], capture_output=True, text=True, timeout=90).stdout
    finally:
        shooter.wait(timeout=90)
    if os.environ.get("LTKD_DOCS_SCREENSHOTS") == "1":
        shutil.copyfile(tmp / shot, DOCS / f"mlflow-{shot}")
    return dom


def header_columns(dom: str) -> list[str]:
    """The runs table's column ids in the order shown (ag-grid's aria-colindex), of the columns it drew."""
    cells = set(re.findall(r'<div[^>]*class="ag-header-cell[^"]*"[^>]*aria-colindex="(\d+)"[^>]*col-id="([^"]+)"', dom))
    return [col for _, col in sorted(cells, key=lambda cell: int(cell[0]))]


def frame_texts(url: str, tmp: Path, wait_s: float = 20.0) -> list[str]:
    """The text of every frame of `url` (child frames too, which --dump-dom leaves out), read over
    Chromium's DevTools protocol once the text stops changing."""
    import asyncio
    import json
    import time

    import aiohttp

    profile = tmp / "chromium-cdp-profile"
    shutil.rmtree(profile, ignore_errors=True)
    proc = subprocess.Popen([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                             f"--user-data-dir={profile}", "--remote-debugging-port=0", "--window-size=1440,900",
                             # frames in the page's process, so the page's frame tree holds them
                             "--disable-site-isolation-trials", "--disable-features=IsolateOrigins,site-per-process", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    async def run() -> list[str]:
        deadline = time.time() + 30
        while not (profile / "DevToolsActivePort").exists() and time.time() < deadline:
            await asyncio.sleep(0.2)
        port = (profile / "DevToolsActivePort").read_text().split()[0]
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/json/list") as r:
                target = next(t for t in await r.json() if t["type"] == "page")
            async with http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                ids = iter(range(1, 10**6))

                async def call(method: str, **params):
                    n = next(ids)
                    await ws.send_str(json.dumps({"id": n, "method": method, "params": params}))
                    while True:  # events in between are not needed
                        msg = json.loads((await ws.receive()).data)
                        if msg.get("id") == n:
                            return msg.get("result", {})

                def frames(tree: dict) -> list[str]:
                    return [tree["frame"]["id"]] + [f for child in tree.get("childFrames", []) for f in frames(child)]

                await call("Page.enable")
                await call("Page.navigate", url=url)
                texts: list[str] = []
                end = time.time() + wait_s
                while time.time() < end:
                    await asyncio.sleep(1.0)
                    now = []
                    # A world of our own in each frame: a sandboxed frame without scripts has no context to join.
                    for frame in frames((await call("Page.getFrameTree"))["frameTree"]):
                        world = await call("Page.createIsolatedWorld", frameId=frame, worldName="ltkd-test")
                        res = await call("Runtime.evaluate", expression="document.body ? document.body.innerText : ''",
                                         contextId=world.get("executionContextId"))
                        now.append(res.get("result", {}).get("value") or "")
                    if now == texts and len(now) > 1:
                        break
                    texts = now
                return texts

    try:
        return asyncio.run(run())
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def text_of(dom: str) -> str:
    """The page's visible words, roughly: tags dropped, entities of interest decoded."""
    text = re.sub(r"<(script|style)[^>]*>.*?</\1>", " ", dom, flags=re.S)
    text = re.sub(r"<[^>]+>", " ", text)
    return re.sub(r"\s+", " ", text.replace("&gt;", ">").replace("&lt;", "<").replace("&amp;", "&").replace("&nbsp;", " "))


@pytest.fixture(scope="module")
def swept(ray_local, tmp_path_factory):
    root = tmp_path_factory.mktemp("ui-store")
    study = root / "ui.yaml"
    study.write_text(textwrap.dedent(STUDY))
    uri = f"sqlite:///{root}/mlflow.db"
    assert main(["sweep", str(study), "--tracking-uri", uri, "--storage", str(root / "tune")]) == 0
    assert main(["tables", str(study), "--tracking-uri", uri, "--out", str(root / "tables")]) == 0
    # The server serves the store's artifacts where the sweep put them (beside the database).
    proc, url = start_mlflow_server(root)
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("ui")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    yield url, exp, runs, root
    stop(proc)


def test_ltkd_ui_serves_the_study_and_its_link_opens_the_model_training_view_grouped_by_cell(swept, tmp_path, monkeypatch):
    """`ltkd ui STUDY` as a user runs it: it starts an MLflow UI for the local store, prints one link
    that a fresh browser profile opens on the model-training view grouped by cell, reuses that UI on the
    next call (and the sweep's browse line links to it), and `--stop` ends it."""
    from orchestrator.commands.session import browse_hint

    _, exp, _, root = swept
    ui_dir = tmp_path / "ui-records"
    monkeypatch.setenv("LTKD_UI_DIR", str(ui_dir))
    monkeypatch.delenv("LTKD_UI_URL", raising=False)
    uri = f"sqlite:///{root}/mlflow.db"
    command = [str(Path(sys.executable).with_name("ltkd")), "ui", str(root / "ui.yaml"), "--tracking-uri", uri, "--no-browser"]
    first = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stdout + first.stderr
    line, how = first.stdout.splitlines()
    found = re.fullmatch(r"runs of study 'ui': (http://127\.0\.0\.1:(\d+)/#/experiments/(\d+)/runs\?workflowType=machine_learning"
                         r"&viewStateShareKey=ltkd)", line)
    assert found and found.group(3) == exp.experiment_id, line
    link, port = found.group(1), int(found.group(2))
    pid = int(re.search(r"started an MLflow UI \(pid (\d+);", how).group(1))
    try:
        dom = page(link, tmp_path, "runs.png")
        text = text_of(dom)
        assert "Model training" in text and "Traces" not in text.split("Runs")[0], text[:2000]
        assert "LTKD w16>w4 γ50" in text  # the group of the table cell, from the `cell` tag
        # Sorted by cell, descending: the Teacher's group first; the tables run (no cell) shown in the opened "Additional runs".
        assert text.index("Group: Teacher w16 γ50") < text.index("Group: LTKD w16>w4 γ50") < text.index("Additional runs 1"), text[:3000]
        assert re.search(r"Additional runs 1 .*tables ui", text), text[:3000]
        # The accuracy columns first, tail first (the UI drew them; params further right are drawn on scroll).
        assert [c for c in header_columns(dom) if c.startswith("metrics.")][:4] == \
            ["metrics.`acc_tail`", "metrics.`acc_all`", "metrics.`acc_head`", "metrics.`acc_medium`"], header_columns(dom)
        assert "params.`seed`" not in header_columns(dom)
        # A run's values as logged: no accuracy with more than 4 decimals. A group's mean is the UI's own sum in
        # JavaScript floats (48.88885 can read 48.888850000000005), left out.
        table = re.sub(r"[-\d.e]+ \(average\)", "", text[text.index("Run Name"):])
        assert re.search(r"Teacher w16 γ50 s0 .*\d\.\d{4}\b", table) and not re.search(r"\d\.\d{5,}", table), table[:2000]
        assert "digits-LT, cnn_w16 → cnn_w4" in text  # the study's description is the experiment's
        assert (tmp_path / "runs.png").stat().st_size > 10_000
        # The report's links open the runs on this UI's port, in the model-training view.
        report = subprocess.run([command[0], "report", str(root / "ui.yaml"), "--tracking-uri", uri, "--out", str(tmp_path / "report"),
                                 "--no-log"], capture_output=True, text=True, timeout=300)
        assert report.returncode == 0, report.stdout + report.stderr
        links = re.findall(r'href="(http://[^"]+/runs/(\w+)\?workflowType=machine_learning)"', (tmp_path / "report" / "ui_report.html").read_text())
        assert links and all(href.startswith(f"http://127.0.0.1:{port}/#/experiments/{exp.experiment_id}/runs/") for href, _ in links), links
        run_link, run_id = links[-1]
        opened = text_of(page(run_link, tmp_path, "report-link.png"))
        sidebar = opened[opened.index("Model training"):opened.index("Docs")]
        assert "Model registry" in sidebar and "Observability" not in sidebar, sidebar  # not the GenAI view
        assert MlflowClient(tracking_uri=uri).get_run(run_id).info.run_name in opened
        again = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert again.returncode == 0 and again.stdout.splitlines() == [line, f"  (the MLflow UI already running (pid {pid}))"], again.stdout
        assert browse_hint(uri, "ui", exp.experiment_id, "ui.yaml") == \
            f"runs: experiment 'ui' in {uri}, browse at {link}"
    finally:
        stopped = subprocess.run([*command, "--stop"], capture_output=True, text=True, timeout=120)
    assert stopped.returncode == 0 and stopped.stdout.strip() == f"stopped the MLflow UI at http://127.0.0.1:{port} (pid {pid})"
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
    hint = browse_hint(uri, "ui", exp.experiment_id, "ui.yaml")  # no UI now: the command that starts one
    assert hint.startswith(f"runs: experiment 'ui' in {uri}; browse them with `") and hint.endswith(f"ltkd ui ui.yaml --tracking-uri {uri}`"), hint
    missing = subprocess.run([*command[:3], "--tracking-uri", f"sqlite:///{tmp_path}/none.db"], capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and missing.stderr.strip().splitlines() == [
        f"ltkd: error: {root / 'ui.yaml'}: study 'ui' has no runs in sqlite:///{tmp_path}/none.db (the file does not exist); "
        f"run `ltkd sweep {root / 'ui.yaml'}` first, or give its --tracking-uri"], missing.stderr


def test_run_names_params_and_metrics_as_written_in_the_study(swept, tmp_path):
    url, exp, runs, root = swept
    assert {"Teacher w16 γ50 s0", "Teacher w16 γ50 s1", "LTKD w16>w4 γ50 s0", "LTKD w16>w4 γ50 s1"} <= set(runs)
    run = runs["LTKD w16>w4 γ50 s0"]
    assert (run.data.params["gamma"], run.data.params["lr"], run.data.params["milestones"]) == ("50", "0.05", "[1]")
    accuracies = {k: v for k, v in run.data.metrics.items() if "acc_" in k}
    assert len(accuracies) == 8 and all(round(v, 4) == v for v in accuracies.values()), accuracies  # acc_* and best_acc_*
    # The learning rate after the milestone: 0.005, not 0.05 * 0.1 = 0.005000000000000001.
    lr = MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db").get_metric_history(run.info.run_id, "lr")
    assert sorted((m.step, m.value) for m in lr) == [(1, 0.05), (2, 0.005)]
    dom = page(experiment_url(url, exp.experiment_id, shared_view=False), tmp_path, "runs-ungrouped.png")
    assert "LTKD w16>w4 γ50 s0" in text_of(dom)


def test_a_distillation_run_shows_its_metrics_data_and_the_link_to_its_teacher(swept, tmp_path):
    url, exp, runs, _ = swept
    run, teacher = runs["LTKD w16>w4 γ50 s1"], runs["Teacher w16 γ50 s1"]
    assert run.data.tags["teacher_run_id"] == teacher.info.run_id
    dom = page(f"{url}/#/experiments/{exp.experiment_id}/runs/{run.info.run_id}?workflowType=machine_learning", tmp_path, "run.png")
    text = text_of(dom)
    assert "acc_tail" in text and "acc_all" in text
    assert f'href="#/experiments/{exp.experiment_id}/runs/{teacher.info.run_id}"' in dom, "no link to the teacher's run"
    assert "Teacher w16 γ50 s1" in text
    assert "digits-LT γ50" in text  # the dataset input
    # Head / medium / tail / all per epoch on one chart: an image beside the run's one-metric charts.
    from matplotlib.image import imread
    client = MlflowClient(tracking_uri=f"sqlite:///{swept[3]}/mlflow.db")
    for r in (run, teacher):
        assert "group_accuracy.png" in {f.path for f in client.list_artifacts(r.info.run_id)}, r.info.run_name
        height, width, _ = imread(client.download_artifacts(r.info.run_id, "group_accuracy.png", str(tmp_path))).shape
        assert (width, height) == (1000, 680)  # 5.0 × 3.4 in at 200 dpi
    dom = page(f"{url}/#/experiments/{exp.experiment_id}/runs/{run.info.run_id}/artifacts/group_accuracy.png"
               "?workflowType=machine_learning", tmp_path, "run-group-accuracy.png")
    assert "group_accuracy.png" in text_of(dom) and "<img" in dom


def test_the_html_table_artifact_renders_plus_minus(swept, tmp_path):
    url, exp, runs, root = swept
    tables = MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db").search_runs([exp.experiment_id], "tags.role = 'tables'")[0]
    served = f"{url}/get-artifact?path=tables/ui_main.html&run_uuid={tables.info.run_id}"
    with urllib.request.urlopen(served, timeout=10) as r:
        assert b'<meta charset="utf-8">' in r.read()
    # MLflow's artifact viewer draws the HTML in a sandboxed frame (a blob of its bytes, no charset of
    # its own): the document's <meta charset> decides how ± and γ read there.
    viewer = f"{url}/#/experiments/{exp.experiment_id}/runs/{tables.info.run_id}/artifacts/tables/ui_main.html?workflowType=machine_learning"
    dom = page(viewer, tmp_path, "tables-artifact.png")
    assert 'class="mlflow-html-iframe"' in dom
    framed = [t for t in frame_texts(viewer, tmp_path) if "Top-1 accuracy" in t and "Teacher" in t]
    assert framed, "the table's frame did not render"
    assert "±" in framed[0] and "γ" in framed[0] and "Â±" not in framed[0] and "Î³" not in framed[0], framed[0]
    logged = {f.path for f in MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db").list_artifacts(tables.info.run_id, "tables")}
    written = {f"tables/{p.name}" for p in (root / "tables").iterdir()}
    assert written <= logged  # the tables run keeps everything `ltkd tables --out` wrote
    assert os.path.exists(tmp_path / "tables-artifact.png")


def test_the_charts_show_head_medium_and_tail_on_one_chart_and_no_one_point_summaries(swept, tmp_path):
    url, exp, runs, _ = swept
    assert {"best_acc_tail", "pg_test_tail", "train_seconds"} <= set(runs["Teacher w16 γ50 s0"].data.metrics)  # columns still
    dom = page(experiment_url(url, exp.experiment_id) + "&compareRunsMode=CHART", tmp_path, "charts.png", budget_ms=40000)
    titles = set(re.findall(r'title="([^"]+)"', dom))  # a chart's title is its header's title attribute (of the charts drawn: the first row)
    assert {"acc_head vs acc_medium vs acc_tail", "acc_all", "loss"} <= titles, sorted(titles)
    summaries = {"best_acc_tail", "best_acc_all", "best_epoch", "train_seconds", "pg_test_tail", "pg_train_head", "acc_tail", "acc_medium"}
    assert not summaries & titles, sorted(summaries & titles)
    # One chart per metric logged per epoch (acc_all, loss, lr, the loss terms), head / medium / tail as one: no summary's.
    logged = {k for r in runs.values() for k in r.data.metrics if not k.startswith("system/")}
    per_epoch = logged - set(SUMMARY_METRICS) - {"acc_medium", "acc_tail"}
    assert {"acc_all", "acc_head", "loss", "lr"} <= per_epoch and len(logged) >= len(per_epoch) + 14
    assert f"Model metrics ({len(per_epoch)})" in text_of(dom), text_of(dom)[:3000]


def test_the_models_page_lists_each_cells_models_and_the_teachers_registered_versions(swept, tmp_path):
    """Each trial's final weights are a LoggedModel of its run: the experiment's Models page lists the
    models of the LTKD cell's seeds and of the teachers, a teacher's with its registered version."""
    url, exp, runs, root = swept
    client = MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")
    cell = client.search_logged_models([exp.experiment_id], filter_string="tags.cell = 'LTKD w16>w4 γ50'", order_by=[
        {"field_name": "metrics.acc_tail", "ascending": False}])
    assert sorted(client.get_run(m.source_run_id).info.run_name for m in cell) == ["LTKD w16>w4 γ50 s0", "LTKD w16>w4 γ50 s1"]
    dom = page(f"{url}/#/experiments/{exp.experiment_id}/models?workflowType=machine_learning", tmp_path, "models.png", budget_ms=20000)
    text = text_of(dom)
    for name in ("LTKD w16>w4 γ50 s0", "LTKD w16>w4 γ50 s1", "Teacher w16 γ50 s0", "Teacher w16 γ50 s1"):
        assert name in text, text[:3000]
    assert "ui Teacher w16 γ50 s0" in text, text[:3000]  # the registered model, in the Registered models column
