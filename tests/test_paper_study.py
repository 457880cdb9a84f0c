"""A paper pair on a fake CIFAR-100-LT copy (torchvision's file format), every baseline, through the
real sweep path: Ray trials, MLflow runs, the recipe preset's defaults, the table."""
import pickle
import textwrap

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from orchestrator.cli import main

pytestmark = pytest.mark.integration

TRAIN_PER_CLASS, TEST_PER_CLASS = 4, 1


def write_fake_cifar100(root):
    """cifar-100-python/{train,test,meta} as torchvision reads them; each image a class-coloured grey."""
    base = root / "cifar-100-python"
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for part, per_class in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
        labels = rng.permutation(np.repeat(np.arange(100), per_class))
        data = (np.repeat(labels[:, None], 3072, axis=1) * 2 + rng.integers(0, 30, (len(labels), 3072))).astype(np.uint8)
        with open(base / part, "wb") as f:
            pickle.dump({"data": data, "fine_labels": labels.tolist(), "coarse_labels": (labels // 5).tolist(),
                         "filenames": [f"{i}.png" for i in range(len(labels))], "batch_label": part}, f)
    with open(base / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)], "coarse_label_names": [f"s{i}" for i in range(20)]}, f)


STUDY = """
name: paper_pair_fake_cifar
dataset:
  name: cifar100
  gammas: [4]
  root: {root}
  options: {{check_md5: false}}
pairs: [{{teacher: resnet32x4, student: resnet8x4}}]
methods:
  kd: {{ce: [standard, balanced_softmax]}}
  dkd: {{}}
  dist: {{}}
  reviewkd: {{}}
  catkd: {{normalize: true}}  # a 1-epoch teacher: unnormalised CAMs overflow at the default weight 15
  bkd: {{}}
  ltkd: {{}}
  balanced_softmax: {{}}
seeds: [0]
recipe: {{preset: cifar, epochs: 1, batch_size: 32, num_workers: 0}}
resources: {{cpu: 1}}
"""


def test_paper_pair_with_every_baseline_on_fake_cifar100(ray_local, tmp_path, capsys):
    write_fake_cifar100(tmp_path / "data")
    study = tmp_path / "study.yaml"
    study.write_text(textwrap.dedent(STUDY.format(root=tmp_path / "data")))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    code = main(["sweep", str(study), "--tracking-uri", uri])
    assert code == 0, capsys.readouterr().out
    out = capsys.readouterr().out
    assert "11 trials: 1 teacher (0 done), 2 student (0 done), 8 distillation (0 done)" in out

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("paper_pair_fake_cifar")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    assert all(r.info.status == "FINISHED" for r in runs.values())
    # The recipe preset and its method defaults are what got tracked.
    kd = runs["KD r32x4>r8x4 γ4 s0"].data.params
    assert (kd["lr"], kd["batch_size"], kd["weight_decay"], kd["milestones"]) == ("0.05", "32", "0.0005", "[150, 180, 210]")
    assert (kd["ce_weight"], kd["alpha"], kd["temperature"]) == ("0.1", "0.9", "4")
    dkd = runs["DKD r32x4>r8x4 γ4 s0"].data.params
    assert (dkd["beta"], dkd["warmup"]) == ("8", "20")
    assert runs["Balanced Softmax r8x4 γ4 s0"].data.params["role"] == "student"
    # The balanced supervised term (issue 17): the preset's KD weights, its own row, recorded as a param.
    kd_bal = runs["KD + BalSoftmax r32x4>r8x4 γ4 s0"].data
    assert (kd_bal.params["ce"], kd_bal.params["ce_weight"], kd["ce"]) == ("balanced_softmax", "0.1", "standard")
    assert kd_bal.tags["row"] == "KD + BalSoftmax" and "loss_ce" in kd_bal.metrics
    # The long-tailed profile of the fake copy: class i keeps int(4 * (1/4) ** (i / 99)) images.
    counts = [int(4 * (1 / 4) ** (i / 99)) for i in range(100)]
    local = client.download_artifacts(runs["LTKD r32x4>r8x4 γ4 s0"].info.run_id, "per_class_accuracy.json", str(tmp_path))
    assert __import__("json").load(open(local))["class_counts"] == counts

    out_dir = tmp_path / "tables"
    assert main(["tables", str(study), "--tracking-uri", uri, "--format", "csv", "--out", str(out_dir)]) == 0
    import pandas as pd

    cells = pd.concat(pd.read_csv(f) for f in out_dir.glob("*.csv"))
    cells = cells[cells["row"] != "Δ"]
    assert set(cells["row"]) == {"Teacher", "Student", "Balanced Softmax", "KD", "KD + BalSoftmax", "DKD", "DIST", "ReviewKD", "CAT-KD", "BKD", "LTKD"}
    assert (cells["n"] == 1).all() and cells["mean"].between(0, 100).all()
