"""What a researcher sees: a swept study in the real MLflow UI, opened in headless Chromium.

`mlflow server` (lean form, loopback) over a store that `ltkd sweep` filled and `ltkd tables --out`
logged to; Chromium renders each page (`--dump-dom` after the page's scripts ran, `--screenshot`
for the record under the test's temporary folder). The checks read the DOM, never pixels.
Without Chromium these tests fail with the command that installs it (`make test` installs Debian's);
the rest of the suite still runs.
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
from conftest import start_mlflow_server, stop

pytestmark = pytest.mark.integration

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
    return dom


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
        assert "acc_tail" in text and "gamma" in text
        assert "digits-LT, cnn_w16 → cnn_w4" in text  # the study's description is the experiment's
        assert (tmp_path / "runs.png").stat().st_size > 10_000
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


def test_run_names_and_params_as_written_in_the_study(swept, tmp_path):
    url, exp, runs, _ = swept
    assert {"Teacher w16 γ50 s0", "Teacher w16 γ50 s1", "LTKD w16>w4 γ50 s0", "LTKD w16>w4 γ50 s1"} <= set(runs)
    assert runs["LTKD w16>w4 γ50 s0"].data.params["gamma"] == "50"
    dom = page(experiment_url(url, exp.experiment_id, shared_view=False), tmp_path, "runs_ungrouped.png")
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


def test_the_html_table_artifact_renders_plus_minus(swept, tmp_path):
    url, exp, runs, root = swept
    tables = MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db").search_runs([exp.experiment_id], "tags.role = 'tables'")[0]
    served = f"{url}/get-artifact?path=tables/ui_main.html&run_uuid={tables.info.run_id}"
    with urllib.request.urlopen(served, timeout=10) as r:
        assert b'<meta charset="utf-8">' in r.read()
    # MLflow's artifact viewer draws the HTML in a sandboxed frame (a blob of its bytes, no charset of
    # its own): the document's <meta charset> decides how ± and γ read there.
    viewer = f"{url}/#/experiments/{exp.experiment_id}/runs/{tables.info.run_id}/artifacts/tables/ui_main.html?workflowType=machine_learning"
    dom = page(viewer, tmp_path, "table.png")
    assert 'class="mlflow-html-iframe"' in dom
    framed = [t for t in frame_texts(viewer, tmp_path) if "Top-1 accuracy" in t and "Teacher" in t]
    assert framed, "the table's frame did not render"
    assert "±" in framed[0] and "γ" in framed[0] and "Â±" not in framed[0] and "Î³" not in framed[0], framed[0]
    logged = {f.path for f in MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db").list_artifacts(tables.info.run_id, "tables")}
    written = {f"tables/{p.name}" for p in (root / "tables").iterdir()}
    assert written <= logged  # the tables run keeps everything `ltkd tables --out` wrote
    assert os.path.exists(tmp_path / "table.png")
