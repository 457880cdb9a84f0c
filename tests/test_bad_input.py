"""Bad input: one line naming the field, the value and what is allowed; exit 2; nothing tracked."""
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from orchestrator.cli import main

GOOD = """
name: bad_input_probe
dataset: {name: digits, gammas: [10]}
pairs: [{teacher: cnn_w16, student: cnn_w4}]
methods:
  ltkd: {alpha: 1.0, beta: 1.0, n_groups: 3}
seeds: [0]
recipe: {epochs: 1}
"""

def search_block(space: str, extra: str = "") -> str:
    """GOOD's seeds line followed by a search block with this space (and extra keys)."""
    return "seeds: [0]\nsearch: {method: ltkd, trials: 4, space: {" + space + "}" + extra + "}"


CASES = [
    # (replace this, with this, expected fragments of the one error line)
    ("gammas: [10]", "gammas: [0.5]", ["dataset.gammas", "0.5", ">= 1"]),
    ("gammas: [10]", "gammas: [.nan]", ["dataset.gammas.0 = nan", "NaN or infinite numbers are not allowed"]),
    # issue 9, first step: non-finite numbers anywhere, impossible recipe values, seeds, names, YAML
    ("beta: 1.0", "beta: .inf", ["methods.ltkd.beta = inf", "NaN or infinite"]),
    ("alpha: 1.0", "alpha: [1.0, .nan]", ["methods.ltkd.alpha.1 = nan", "NaN or infinite"]),
    ("epochs: 1", "epochs: 1, lr: -.inf", ["recipe.lr = -inf", "NaN or infinite"]),
    ("epochs: 1", "epochs: 1, lr_decay: -0.1", ["recipe.lr_decay", "-0.1", "must be >= 0"]),
    ("epochs: 1", "epochs: 4, milestones: [3, 2]", ["recipe.milestones", "increasing order"]),
    ("epochs: 1", "epochs: 4, milestones: [-1]", ["recipe.milestones", "epochs >= 1"]),
    ("seeds: [0]", "seeds: [0]\nteacher_recipe: {epochs: 0}", ["teacher_recipe.epochs = 0", ">= 1"]),
    ("seeds: [0]", "seeds: [0]\nteacher_recipe: {lr_decay: -1}", ["teacher_recipe.lr_decay = -1", ">= 0"]),
    ("seeds: [0]", "seeds: [true]", ["seeds.0", "True", "valid integer"]),
    ("seeds: [0]", "seeds: [-1]", ["seeds", "seed -1 is not allowed", "2**32 - 1"]),
    ("seeds: [0]", "seeds: [4294967296]", ["seeds", "seed 4294967296 is not allowed"]),
    ("seeds: [0]", "seeds: [1, 2, 1]", ["seeds", "seed 1 is listed twice"]),
    ("seeds: [0]", "seeds: [1.5]", ["seeds.0", "1.5", "valid integer"]),
    ("seeds: [0]", "seeds: [0]\nseeds: [1]", ["not valid YAML at line", "key 'seeds' is given twice"]),
    ("n_groups: 3", "n_groups: 3, beta: 2.0", ["not valid YAML at line", "key 'beta' is given twice"]),
    ("name: bad_input_probe", "name: a/b", ["name = 'a/b'", "no '/'"]),
    ("name: bad_input_probe", "name: ../up", ["name = '../up'", "no '/'"]),
    ("name: bad_input_probe", 'name: "tab\\there"', ["name = 'tab\\there'", "control characters"]),  # YAML's \\t: a tab
    ("name: bad_input_probe", 'name: "back\\\\slash"', ["name = 'back\\\\slash'", "'\\'"]),
    ("name: bad_input_probe", "name: .hidden", ["name = '.hidden'", "leading '.'"]),
    ("name: bad_input_probe", "name: " + "x" * 101, ["name", "at most 100 characters"]),
    ("gammas: [10]", "gammas: ten", ["dataset.gammas", "'ten'", "valid list"]),
    ("n_groups: 3", "n_groups: 11", ["methods.ltkd.n_groups = 11", "between 1 and the number of classes (10)"]),
    ("beta: 1.0", "beta: -2", ["methods.ltkd.beta = -2", "must be >= 0"]),
    ("beta: 1.0", "bta: 1.0", ["methods.ltkd.bta", "unknown hyperparameter", "allowed for ltkd", "beta"]),
    ("student: cnn_w4", "student: resnet9000", ["pairs.0.student", "'resnet9000'", "unknown model", "allowed:", "resnet8x4"]),
    ("ltkd: {", "ltkdd: {", ["methods", "unknown method 'ltkdd'", "allowed:", "ltkd"]),
    ("name: digits", "name: cifar1000", ["dataset.name", "'cifar1000'", "unknown dataset", "allowed:", "cifar100"]),
    ("seeds: [0]", "seeds: [0]\nsedes: [1]", ["sedes", "unknown key"]),
    ("epochs: 1", "epochs: 0", ["recipe.epochs", "0", ">= 1"]),
    ("epochs: 1", "epochz: 1", ["recipe.epochz", "unknown key"]),
    ("epochs: 1", "preset: cifar9", ["recipe.preset", "'cifar9'", "allowed:", "cifar"]),
    ("pairs: [{teacher: cnn_w16, student: cnn_w4}]", "pairs: []", ["pairs", "at least 1"]),
    ("n_groups: 3", "n_groups: 2.5", ["methods.ltkd.n_groups = 2.5", "whole number"]),
    ("alpha: 1.0", "alpha: yes", ["methods.ltkd.alpha = True", "must be a number"]),
    # issue 15: the paper's values for a table
    ("seeds: [0]", "seeds: [0]\npaper: {mian: {source: s, rows: {LTKD: [1, 2]}}}", ["paper.mian: no table of this study has that name", "main"]),
    ("seeds: [0]", "seeds: [0]\npaper: {main: {source: s, rows: {KD: [1, 2]}}}", ["paper.main.rows.KD: not a row of table 'main'", "LTKD"]),
    ("seeds: [0]", "seeds: [0]\npaper: {main: {source: s, rows: {LTKD: [1, 2, 3]}}}", ["paper.main.rows.LTKD: 3 values", "2 columns"]),
    ("seeds: [0]", "seeds: [0]\npaper: {main: {rows: {LTKD: [1, 2]}}}", ["paper.main.source", "required field is missing"]),
    # issue 17: the supervised term of a distillation method
    ("alpha: 1.0", "alpha: 1.0, ce: focal", ["methods.ltkd.ce = 'focal'", "allowed: standard, balanced_softmax"]),
    ("alpha: 1.0", "alpha: 1.0, ce: [standard, Balanced_Softmax]", ["methods.ltkd.ce = 'Balanced_Softmax'", "allowed: standard, balanced_softmax"]),
    # issue 11: the search block
    ("seeds: [0]", search_block("alpha: {low: 2, high: 2}"), ["search.space.alpha", "empty range: low (2) must be below high (2)"]),
    ("seeds: [0]", search_block("alpha: {low: 0, high: 2, log: true}"), ["search.space.alpha", "a log range needs low > 0"]),
    ("seeds: [0]", search_block("alpha: []"), ["search.space.alpha = []", "at least one choice"]),
    ("seeds: [0]", search_block("alpah: [1, 2]"), ["search.space.alpah: unknown hyperparameter", "allowed for ltkd", "alpha"]),
    ("seeds: [0]", search_block("n_groups: [3, 12]"), ["search.space.n_groups = 12", "between 1 and the number of classes (10)"]),
    ("seeds: [0]", search_block("n_groups: {low: 2, high: 11}"), ["search.space.n_groups = 11", "between 1 and the number of classes"]),
    ("seeds: [0]", search_block("ce: {low: 1, high: 2}"), ["search.space.ce", "give a list of choices, not a range"]),
    ("seeds: [0]", search_block("beta: {low: -1, high: 2}"), ["search.space.beta = -1", "must be >= 0"]),
    ("seeds: [0]", search_block("alpha: [1]", ", metric: acc_tail"), ["search.metric = 'acc_tail'", "val_acc_tail"]),
    ("seeds: [0]", search_block("alpha: [1]", ", sampler: grid"), ["search.sampler = 'grid'", "tpe"]),
    ("seeds: [0]", search_block("alpha: [1]", ", pruner: hyperband"), ["search.pruner = 'hyperband'", "asha"]),
    ("seeds: [0]", search_block("alpha: [1]").replace("trials: 4", "trials: 0"), ["search.trials = 0", "greater than or equal to 1"]),
    ("seeds: [0]", search_block("alpha: [1]").replace("method: ltkd", "method: ce"), ["search.method = 'ce'", "trains without a teacher"]),
    ("seeds: [0]", search_block("alpha: [1]", ", budget: 3"), ["search.budget: unknown key"]),
    ("seeds: [0]", "seeds: [0]\nsearch: {method: ltkd, trials: 4}", ["search.space: required field is missing"]),
    ("methods:\n  ltkd: {alpha: 1.0,", "search: {method: ltkd, trials: 4, space: {beta: [1, 2]}}\nmethods:\n  ltkd: {alpha: [1.0, 2.0],",
     ["methods.ltkd.alpha: a grid beside search.space", "put alpha in the space, or give one value"]),
    ("alpha: 1.0", "alpha: 1.0, from_search: ''", ["methods.ltkd.from_search = ''", "the name of a search study"]),
    ("alpha: 1.0", "alpha: 1.0, from_search: nowhere", ["methods.ltkd.from_search = 'nowhere'", "no file", "nowhere.best.yaml",
                                                       "ltkd best"]),
    # issue 26, class 1: whatever can be known without training. Quoted NaN / infinity where numbers go:
    ("epochs: 1", "epochs: 1, lr: 'nan'", ["recipe.lr = 'nan'", "finite number"]),
    ("gammas: [10]", "gammas: ['inf']", ["dataset.gammas.0 = 'inf'", "finite number"]),
    ("alpha: 1.0", "alpha: 'nan'", ["methods.ltkd.alpha = 'nan'", "must be a number"]),
    ("seeds: [0]", "seeds: [0]\nteacher_recipe: {lr: '-inf'}", ["teacher_recipe.lr = '-inf'", "finite number"]),
    # ... numbers in the dtype they are used in (float32 for training, 64-bit integers for counts):
    ("epochs: 1", "epochs: 1, lr: 1e308", ["recipe.lr = 1e+308", "beyond the float32 range"]),
    ("epochs: 1", "epochs: 1, weight_decay: 1e-50", ["recipe.weight_decay = 1e-50", "0 in the float32"]),
    ("alpha: 1.0", "alpha: 1e39", ["methods.ltkd.alpha = 1e+39", "beyond the float32 range"]),
    ("alpha: 1.0", "alpha: [1, 1e40]", ["methods.ltkd.alpha = 1e+40", "beyond the float32 range"]),
    ("epochs: 1", "epochs: " + "9" * 300, ["recipe.epochs = 999", "(300 characters)", "beyond the 64-bit integers", "9223372036854775807"]),
    ("epochs: 1", "epochs: 4, milestones: [1, " + "9" * 40 + "]", ["recipe.milestones", "beyond the 64-bit integers"]),
    ("seeds: [0]", "seeds: [0]\nteacher_recipe: {epochs: " + "9" * 30 + "}", ["teacher_recipe.epochs", "beyond the 64-bit"]),
    ("n_groups: 3", "n_groups: 3, temperature: 1e-46", ["methods.ltkd.temperature = 1e-46", "0 in the float32"]),
    # ... teacher_recipe validated and coerced as recipe is (its preset is the study's):
    ("seeds: [0]", "seeds: [0]\nteacher_recipe: {epochz: 1}", ["teacher_recipe.epochz: unknown key"]),
    ("seeds: [0]", "seeds: [0]\nteacher_recipe: {preset: cifar}", ["teacher_recipe.preset = 'cifar'", "the study's recipe.preset"]),
    # ... the long-tailed profile against the images each class has (digits: 144 in its smallest class):
    ("gammas: [10]", "gammas: [10], n_max: 200", ["dataset: n_max = 200", "class 0 of digits needs 200 training images and has 148",
                                                 "allowed: n_max up to 148"]),
    ("gammas: [10]", "gammas: [1], n_max: 150", ["n_max = 150", "γ = 1 class 0 of digits needs 150", "allowed: n_max up to 144"]),
    ("seeds: [0]", search_block("alpha: [1]", ", validation_per_class: 150"),
     ["search.validation_per_class = 150", "144 training images in its smallest class", "none left"]),
    ("gammas: [10]", "gammas: [10], split_seed: -1", ["dataset.split_seed = -1", "greater than or equal to 0"]),
    ("gammas: [10]", "gammas: [10], split_seed: 4294967296", ["dataset.split_seed = 4294967296", "less than 4294967296"]),
    # ... names and descriptions within the filesystem's and MLflow's limits:
    ("name: bad_input_probe", "name: " + "名" * 100, ["name = '名名", "300 bytes in UTF-8", "255 bytes", "at most 227 bytes"]),
    ("seeds: [0]", "seeds: [0]\ntables: [{kind: main, name: " + "t" * 220 + "}]", ["tables.0.name = 'ttt", "would have 259 bytes",
                                                                                   "at most 255"]),
    ("name: bad_input_probe", "name: bad_input_probe\ndescription: " + "d" * 20_000, ["description = 'ddd", "(20,000 characters)",
                                                                                       "at most 19000 characters"]),
    # ... resources Ray can schedule:
    ("seeds: [0]", "seeds: [0]\nresources: {cpu: 0.00001}", ["resources.cpu = 1e-05", "a fraction from 0.01 to 1"]),
    ("seeds: [0]", "seeds: [0]\nresources: {cpu: 1.5}", ["resources.cpu = 1.5", "a whole number"]),
    ("seeds: [0]", "seeds: [0]\nresources: {gpu: 0.333333}", ["resources.gpu = 0.333333", "in steps of 0.0001", "or 0"]),
    # ... and labels that would collide in the tables:
    ("gammas: [10]", "gammas: [10, 10.0000001]", ["dataset.gammas", "10.0 and 10.0000001 both show as '10'"]),
    ("gammas: [10]", "gammas: [10, 10]", ["dataset.gammas", "both show as '10'"]),
    ("alpha: 1.0", "alpha: [1, 1.0]", ["methods.ltkd.alpha: the grid values 1 and 1.0 both show as alpha=1"]),
    ("alpha: 1.0", "alpha: [2, 1.0000001, 1]", ["methods.ltkd.alpha: the grid values 1.0000001 and 1 both show as alpha=1"]),
    ("pairs: [{teacher: cnn_w16, student: cnn_w4}]", "pairs: [{teacher: cnn_w16, student: cnn_w4}, {teacher: cnn_w16, student: cnn_w4}]",
     ["pairs: cnn_w16>cnn_w4 is listed twice (entries 0 and 1"]),
    # issue 26, class 2: messages that name the field, for every YAML shape
    ("n_groups: 3", "n_groups: 3, [1, 2]: 3", ["not valid YAML at line", "a key must be a plain value, got a list ([1, 2])"]),
    ("alpha: 1.0", "alpha: [1, {a: 1}]", ["methods.ltkd.alpha = {'a': 1}: must be a number"]),
    ("alpha: 1.0", "alpha: [[1, 2]]", ["methods.ltkd.alpha = [1, 2]: must be a number"]),
    ("alpha: 1.0", "alpha: 1.0, ce: [standard, [x]]", ["methods.ltkd.ce = ['x']: allowed: standard, balanced_softmax"]),
    ("ltkd: {alpha: 1.0, beta: 1.0, n_groups: 3}", "ltkd: 5", ["methods.ltkd = 5", "valid dictionary"]),
    ("seeds: [0]", search_block("alpha: {low: 1}"), ["search.space.alpha.high: required field is missing"]),
    ("seeds: [0]", search_block("alpha: [1, {a: 2}]"), ["search.space.alpha = {'a': 2}: must be a number"]),
    ("seeds: [0]", search_block("alpha: 3"), ["search.space.alpha = 3: give a range {low, high} or a list of choices"]),
]



def _ray_started() -> bool:
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


def run_cli(args, cwd, capsys):
    import os

    old = os.getcwd()
    os.chdir(cwd)
    try:
        code = main(args)
    finally:
        os.chdir(old)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("old,new,fragments", CASES, ids=[f"{i}:{c[1].splitlines()[-1][:30]}" for i, c in enumerate(CASES)])
def test_malformed_study_is_refused_with_one_line(tmp_path, capsys, old, new, fragments):
    assert old in GOOD
    study = tmp_path / "study.yaml"
    study.write_text(textwrap.dedent(GOOD.replace(old, new, 1)))
    code, out, err = run_cli(["sweep", str(study)], tmp_path, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"ltkd: error: {study}: ")
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert out == ""
    # Refused before anything is written: no local store appears, and no Ray was started.
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()
    assert not _ray_started()


def test_the_good_study_validates(tmp_path, capsys):
    study = tmp_path / "study.yaml"
    study.write_text(textwrap.dedent(GOOD))
    code, out, err = run_cli(["sweep", str(study), "--dry-run"], tmp_path, capsys)
    assert code == 0, err
    assert "3 trials: 1 teacher (0 done), 1 student (0 done), 1 distillation (0 done); 3 to run" in out
    assert not (tmp_path / "mlflow.db").exists()  # a dry run writes nothing either


def test_broken_yaml_names_the_line(tmp_path, capsys):
    study = tmp_path / "study.yaml"
    study.write_text("name: x\ndataset: {name: digits, gammas: [10]\npairs: []\n")
    code, _, err = run_cli(["sweep", str(study)], tmp_path, capsys)
    assert code == 2
    assert err.count("\n") == 1 and "not valid YAML at line" in err


def test_missing_file_and_non_mapping(tmp_path, capsys):
    code, _, err = run_cli(["sweep", str(tmp_path / "nope.yaml")], tmp_path, capsys)
    assert (code, err.strip()) == (2, f"ltkd: error: {tmp_path / 'nope.yaml'}: no such study file")
    study = tmp_path / "list.yaml"
    study.write_text("- 1\n- 2\n")
    code, _, err = run_cli(["sweep", str(study)], tmp_path, capsys)
    assert code == 2 and "must be a YAML mapping" in err and err.count("\n") == 1


def test_unknown_subcommand_and_format(tmp_path, capsys):
    code, _, err = run_cli(["sweeep", "x.yaml"], tmp_path, capsys)
    assert code == 2 and "invalid choice: 'sweeep'" in err and err.count("\n") == 1
    code, _, err = run_cli(["tables", "x.yaml", "--format", "pdf"], tmp_path, capsys)
    assert code == 2 and "invalid choice: 'pdf'" in err and err.count("\n") == 1


def test_unreachable_tracking_server_is_refused_before_anything_runs(tmp_path, capsys):
    study = tmp_path / "study.yaml"
    study.write_text(textwrap.dedent(GOOD))
    code, out, err = run_cli(["sweep", str(study), "--tracking-uri", "http://127.0.0.1:9"], tmp_path, capsys)
    assert code == 2
    assert err.strip().startswith("ltkd: error: --tracking-uri http://127.0.0.1:9: MLflow server not reachable")
    assert err.count("\n") == 1 and out == ""


def test_tables_without_runs_is_refused(tmp_path, capsys):
    study = tmp_path / "study.yaml"
    study.write_text(textwrap.dedent(GOOD))
    code, _, err = run_cli(["tables", str(study)], tmp_path, capsys)
    assert code == 2 and "no runs of study 'bad_input_probe'" in err and err.count("\n") == 1


def test_train_rejects_unknown_model_and_bad_gamma(tmp_path, capsys):
    code, _, err = run_cli(["train", "--model", "nope"], tmp_path, capsys)
    assert code == 2 and "--model nope: unknown; allowed:" in err
    code, _, err = run_cli(["train", "--gamma", "0.2"], tmp_path, capsys)
    assert code == 2 and "--gamma 0.2: the imbalance factor must be a finite number >= 1" in err
    code, _, err = run_cli(["train", "--method", "ltkd", "--teacher-checkpoint", "nowhere"], tmp_path, capsys)
    assert code == 2 and "--teacher-checkpoint nowhere: no model.pt there" in err and err.count("\n") == 1
    code, _, err = run_cli(["train", "--method", "ltkd", "--teacher-checkpoint", ".", "--param", "bta=2"], tmp_path, capsys)
    assert code == 2 and "--param bta: unknown hyperparameter of ltkd; allowed: ce_weight, alpha, beta" in err


def test_real_process_prints_no_traceback(tmp_path):
    """The installed `ltkd` script, as a user runs it: exit 2, one stderr line, no traceback."""
    study = tmp_path / "study.yaml"
    study.write_text(textwrap.dedent(GOOD.replace("gammas: [10]", "gammas: [0]")))
    ltkd = Path(sys.executable).parent / "ltkd"
    proc = subprocess.run([str(ltkd), "sweep", str(study)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"ltkd: error: {study}: dataset.gammas: gamma = 0 is not allowed: the imbalance factor must be >= 1"]


def test_cluster_address_without_shared_storage_is_refused(tmp_path, capsys):
    study = tmp_path / "study.yaml"
    study.write_text(textwrap.dedent(GOOD))
    code, out, err = run_cli(["sweep", str(study), "--address", "ray://head:10001"], tmp_path, capsys)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err.startswith("ltkd: error: --address ray://head:10001: a Ray cluster needs --storage")
    assert not (tmp_path / "mlflow.db").exists()


def test_missing_dataset_files_are_bad_input_before_anything_runs(tmp_path, capsys):
    study = tmp_path / "study.yaml"
    study.write_text(textwrap.dedent(GOOD.replace("name: digits, gammas: [10]", f"name: cifar100, gammas: [10], root: {tmp_path}/nothing")
                                     .replace("n_groups: 3", "n_groups: 3")))
    code, out, err = run_cli(["sweep", str(study)], tmp_path, capsys)
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"ltkd: error: dataset 'cifar100': cifar100: no CIFAR-100 files under {tmp_path}/nothing")
    assert not (tmp_path / "mlflow.db").exists()


def test_unknown_dataset_option_is_bad_input(tmp_path, capsys):
    study = tmp_path / "study.yaml"
    study.write_text(textwrap.dedent(GOOD.replace("name: digits, gammas: [10]", "name: digits, gammas: [10], options: {colour: red}")))
    code, _, err = run_cli(["sweep", str(study)], tmp_path, capsys)
    assert code == 2 and err.count("\n") == 1 and "dataset.options {'colour': 'red'}" in err
    assert not (tmp_path / "mlflow.db").exists()


BOMB = "name: bomb\n" + "l0: &l0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]\n" for i in range(1, 9)) + "dataset: {name: digits, gammas: *l8}\n"
HUGE_GRID = GOOD.replace("ltkd: {alpha: 1.0, beta: 1.0, n_groups: 3}",
                         "ltkd: {alpha: [%s], beta: [%s], temperature: [%s]}" % ((", ".join(str(1 + i / 100) for i in range(100)),) * 3))
DEEP = "name: deep\nx: " + "[" * 5000 + "]" * 5000 + "\n"
# 400 x 400 grid points over 60 seeds: counted from the lists' lengths, never expanded.
GRID_400 = GOOD.replace("ltkd: {alpha: 1.0, beta: 1.0, n_groups: 3}", "ltkd: {alpha: [%s], beta: [%s]}" % (
    (", ".join(str(1 + i / 1000) for i in range(400)),) * 2)).replace("seeds: [0]", "seeds: [%s]" % ", ".join(map(str, range(60))))


@pytest.mark.parametrize("body,fragments", [
    (BOMB, ["not valid YAML", "more than 100,000 values once its aliases", "LTKD_MAX_YAML_NODES"]),
    (HUGE_GRID, ["expands into 1,000,002 trials", "at most 100,000", "LTKD_MAX_TRIALS"]),
    (DEEP, ["not valid YAML", "nested too deeply"]),
    ("x" * 1_000_001, ["1,000,001 bytes", "at most 1,000,000", "LTKD_MAX_STUDY_BYTES"]),
    (b"name: caf\xe9\n", ["not UTF-8 text (byte 9)"]),
    (GRID_400, ["expands into 9,600,120 trials", "at most 100,000"]),
], ids=["alias bomb", "million-trial grid", "deep nesting", "huge file", "not utf-8", "400x400 grid, 60 seeds, dry run"])
def test_hostile_study_is_refused_in_seconds_and_bounded_memory(tmp_path, body, fragments):
    """A real process under a 1.5 GB address-space limit: one line, exit 2, within 20 s, no store."""
    import resource
    import time

    study = tmp_path / "hostile.yaml"
    study.write_bytes(body if isinstance(body, bytes) else body.encode())
    limit = 1536 * 2**20

    def cap_memory():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    started = time.monotonic()
    proc = subprocess.run([str(Path(sys.executable).parent / "ltkd"), "sweep", str(study), "--dry-run"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, preexec_fn=cap_memory)
    elapsed = time.monotonic() - started
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert elapsed < 20, f"took {elapsed:.1f} s"
    assert not (tmp_path / "mlflow.db").exists()


# Issue 9, second step: options and environments that cannot work. Each case: the command line
# ({study}, {tmp} filled in) and fragments of the one line; a tuple holds alternatives.
COMMAND_CASES = [
    (["sweep", "{study}", "--tracking-uri", "foo://x"], ["--tracking-uri foo://x", "unknown scheme 'foo'", "allowed:", "sqlite:///PATH"]),
    (["sweep", "{study}", "--tracking-uri", "file://{tmp}/fs"], ["file store is retired", "sqlite:///PATH/mlflow.db"]),
    (["sweep", "{study}", "--tracking-uri", "{tmp}/mlruns"], ["file store is retired"]),
    (["sweep", "{study}", "--tracking-uri", "postgresql://u:p@127.0.0.1:9/db"],
     ["--tracking-uri postgresql://u:***@127.0.0.1:9/db: ", ("database driver is not installed", "127.0.0.1:9 not reachable")]),
    (["sweep", "{study}", "--tracking-uri", "sqlite:///{tmp}/m.db?mode=ro"], ["plain file path (no ?query"]),
    (["sweep", "{study}", "--storage", "{tmp}/a_file/sub"], ["--storage {tmp}/a_file/sub: cannot write there (Not a directory)"]),
    (["sweep", "{study}", "--wait-for-resources", "-1"], ["--wait-for-resources -1: must be a number of minutes >= 0"]),
    (["sweep", "{study}", "--outage-limit", "0"], ["--outage-limit 0: must be a number of minutes > 0"]),
    (["sweep", "{study}", "--retrain-teacher", "abc"], ["--retrain-teacher abc: names no teacher of this study", "its teachers:"]),
    (["sweep", "{tmp}"], ["no such study file"]),
    (["tables", "{study}", "--out", "{tmp}/a_file/sub"], ["--out {tmp}/a_file/sub: cannot write there (Not a directory)"]),
    (["status", "{study}", "--tracking-uri", "foo://x"], ["unknown scheme 'foo'"]),
    (["train", "--epochs", "0"], ["--epochs 0: must be >= 1"]),
    (["train", "--batch-size", "-1"], ["--batch-size -1: must be >= 1"]),
    (["train", "--lr", "nan"], ["--lr nan: the learning rate must be a finite number > 0"]),
    (["train", "--lr", "-1"], ["--lr -1: the learning rate must be a finite number > 0"]),
    (["train", "--gamma", "inf"], ["--gamma inf: the imbalance factor must be a finite number >= 1"]),
    (["train", "--seed", "-1"], ["--seed -1: must be between 0 and 2**32 - 1"]),
    (["train", "--device", "tpu"], ["--device tpu: allowed: auto, cpu, cuda, cuda:N, mps"]),
    (["train", "--device", "cuda:99"], ["--device cuda:99: PyTorch sees", "use --device auto or cpu"]),
    (["train", "--epochs", "x"], ["argument --epochs: invalid int value: 'x'"]),
    (["train", "--dataset", "cifar10", "--root", "{tmp}/none"], ["--dataset cifar10: cifar10: no CIFAR-10 files under {tmp}/none"]),
    (["train", "--method", "kd", "--teacher-checkpoint", "{tmp}", "--param", "alpha=oops"], ["--param alpha = 'oops': must be a number"]),
    (["train", "--method", "ltkd", "--teacher-checkpoint", "{tmp}", "--param", "n_groups=11"], ["--param n_groups = 11", "between 1 and"]),
    (["train", "--method", "kd", "--teacher-checkpoint", "{tmp}", "--param", "alpha=.nan"], ["--param alpha=nan: NaN or infinite"]),
    (["train", "--method", "kd", "--teacher-checkpoint", "{tmp}"], [f"--teacher-checkpoint {{tmp}}: no model.pt there"]),
    (["train", "--save", "{tmp}/a_file/x"], ["--save {tmp}/a_file/x: cannot write there (Not a directory)"]),
    # issue 26: waiting times the timers can hold; paths too long for the filesystem
    (["sweep", "{study}", "--tables-every", "inf"], ["--tables-every inf: must be a number of minutes >= 0 and at most"]),
    (["sweep", "{study}", "--tables-every", "1e300"], ["--tables-every 1e+300: must be a number of minutes >= 0"]),
    (["sweep", "{study}", "--outage-limit", "nan"], ["--outage-limit nan: must be a number of minutes > 0"]),
    (["sweep", "{study}", "--wait-for-resources", "inf"], ["--wait-for-resources inf: must be a number of minutes >= 0"]),
    (["tables", "{study}", "--out", "{tmp}/o", "--watch", "--every", "inf"], ["--every inf: must be a number of seconds > 0"]),
    (["sweep", "{study}", "--storage", "{tmp}/" + "s" * 300], ["--storage {tmp}/sss", "cannot write there (File name too long)"]),
    (["sweep", "{study}", "--storage", "foo://bucket/x"], ["--storage foo://bucket/x: unknown scheme 'foo'", "allowed: a path", "s3://"]),
    (["search", "{study}", "--storage", "memory://x"], ["--storage memory://x: unknown scheme 'memory'", "gs://"]),
    (["sweep", "{study}", "--address", "nohost", "--storage", "{tmp}/st"], ["--address nohost", "not a Ray address: give HOST:PORT"]),
    (["tables", "{study}", "--out", "{tmp}/" + "o" * 300], ["--out {tmp}/ooo", "cannot write there (File name too long)"]),
    (["train", "--save", "{tmp}/" + "v" * 300], ["--save {tmp}/vvv", "cannot write there (File name too long)"]),
]


@pytest.mark.parametrize("args,fragments", COMMAND_CASES, ids=[" ".join(c[0])[:40] for c in COMMAND_CASES])
def test_bad_option_or_environment_is_refused_with_one_line(tmp_path, capsys, monkeypatch, args, fragments):
    monkeypatch.setenv("HOME", str(tmp_path))
    study = tmp_path / "study.yaml"
    study.write_text(textwrap.dedent(GOOD))
    (tmp_path / "a_file").write_text("")
    filled = [a.format(study=study, tmp=tmp_path) for a in args]
    code, out, err = run_cli(filled, tmp_path, capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ltkd: error: "), err
    for fragment in fragments:
        options = fragment if isinstance(fragment, tuple) else (fragment,)
        assert any(f.format(tmp=tmp_path) in lines[0] for f in options), (fragment, lines[0])
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists() and not (tmp_path / "m.db").exists()
    assert not _ray_started()


def test_yaml_merge_keys_and_exponent_floats_are_read_as_users_mean(tmp_path, capsys):
    """`<<: *base` merges a mapping (keys given beside it win); `1e-1` is a number, as in YAML 1.2 (PyYAML reads YAML 1.1)."""
    from orchestrator.study import expand, load_study

    study = tmp_path / "study.yaml"
    study.write_text(textwrap.dedent(GOOD.replace("recipe: {epochs: 1}", "recipe: &base {epochs: 1, lr: 1e-1, weight_decay: 5E-4}\n"
                                                  "teacher_recipe: {<<: *base, epochs: 2}")))
    code, out, err = run_cli(["sweep", str(study), "--dry-run"], tmp_path, capsys)
    assert code == 0, err
    trials = expand(load_study(study))
    teacher = next(t for t in trials if t.role == "teacher").config.recipe
    student = next(t for t in trials if t.role == "student").config.recipe
    assert (teacher.epochs, teacher.lr, teacher.weight_decay) == (2, 0.1, 0.0005)
    assert (student.epochs, student.lr, student.weight_decay) == (1, 0.1, 0.0005)
    assert isinstance(teacher.lr, float)  # coerced once, as recipe's own fields are


def test_teacher_recipe_values_are_coerced_into_the_teachers_config(tmp_path):
    from orchestrator.study import expand, parse_study
    import yaml

    data = yaml.safe_load(textwrap.dedent(GOOD))
    data["teacher_recipe"] = {"lr": "0.5", "milestones": [2, 3], "epochs": 4}
    (teacher,) = [t for t in expand(parse_study(data)) if t.role == "teacher"]
    assert (teacher.config.recipe.lr, teacher.config.recipe.milestones, teacher.config.recipe.epochs) == (0.5, (2, 3), 4)


@pytest.mark.parametrize("variable", ["LTKD_MAX_TRIALS", "LTKD_MAX_YAML_NODES", "LTKD_MAX_STUDY_BYTES"])
@pytest.mark.parametrize("value", ["lots", "-5", "0", "1.5"])
def test_limit_variables_set_to_garbage_are_named_in_one_line(tmp_path, capsys, monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    study = tmp_path / "study.yaml"
    study.write_text(textwrap.dedent(GOOD))
    code, out, err = run_cli(["sweep", str(study), "--dry-run"], tmp_path, capsys)
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [f"ltkd: error: {variable} = {value!r}: must be a whole number >= 1 "
                                        f"(default {dict(LTKD_MAX_TRIALS='100,000', LTKD_MAX_YAML_NODES='100,000', LTKD_MAX_STUDY_BYTES='1,000,000')[variable]})"]


def test_a_study_path_too_long_for_the_filesystem_is_bad_input(tmp_path, capsys):
    long = tmp_path / ("s" * 300) / "study.yaml"
    code, out, err = run_cli(["sweep", str(long)], tmp_path, capsys)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "cannot open the study file (File name too long)" in err


def test_digits_class_counts_declared_for_validation_match_the_reader():
    import numpy as np

    from trainer.datasets import class_counts_of
    from trainer.datasets.digits import load

    assert class_counts_of("digits") == np.bincount(load().train_targets).tolist()
    assert class_counts_of("digits", {"test_per_class": 40}) == np.bincount(load(test_per_class=40).train_targets).tolist()


def _teacher_checkpoint(folder: Path, model: str, num_classes: int, in_channels: int) -> Path:
    """A checkpoint as `ltkd train --save` writes it (untrained weights: only its header matters here)."""
    from trainer.config import TrialConfig
    from trainer.loop import save_checkpoint
    from trainer.models import build_model

    config = TrialConfig(role="student", dataset="digits", gamma=10.0, model=model, seed=0)
    save_checkpoint(str(folder), build_model(model, num_classes, in_channels=in_channels), config, num_classes, in_channels)
    return folder / "model.pt"


def test_train_refuses_to_save_over_its_teacher_checkpoint(tmp_path, capsys):
    file = _teacher_checkpoint(tmp_path / "T", "cnn_w8", 10, 1)
    before = file.read_bytes()
    for save in (str(tmp_path / "T"), str(tmp_path / "T") + "/", str(tmp_path / "x" / ".." / "T")):
        (tmp_path / "x").mkdir(exist_ok=True)
        code, out, err = run_cli(["train", "--method", "kd", "--teacher-checkpoint", str(tmp_path / "T"), "--save", save,
                                  "--epochs", "1"], tmp_path, capsys)
        assert code == 2 and out == "" and err.count("\n") == 1, err
        assert f"--save {save}: holds the --teacher-checkpoint's model.pt; the student's weights would overwrite the teacher's" in err
    code, _, err = run_cli(["train", "--method", "kd", "--teacher-checkpoint", str(file), "--save", str(tmp_path / "T"),
                            "--epochs", "1"], tmp_path, capsys)
    assert code == 2 and "would overwrite the teacher's" in err
    assert file.read_bytes() == before


def test_train_refuses_a_teacher_checkpoint_of_another_class_count(tmp_path, capsys):
    _teacher_checkpoint(tmp_path / "T100", "cnn_w8", 100, 1)
    code, out, err = run_cli(["train", "--method", "kd", "--teacher-checkpoint", str(tmp_path / "T100"), "--epochs", "1"],
                             tmp_path, capsys)
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [f"ltkd: error: --teacher-checkpoint {tmp_path / 'T100'}: its cnn_w8 has 100 classes and 1 "
                                        "input channel(s); --dataset digits has 10 and 1: give a teacher trained on digits"]
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "model.pt").write_bytes(b"not a checkpoint")
    code, _, err = run_cli(["train", "--method", "kd", "--teacher-checkpoint", str(tmp_path / "junk")], tmp_path, capsys)
    assert code == 2 and err.count("\n") == 1 and "not a checkpoint written by `ltkd train --save`" in err


def test_a_ray_address_where_nothing_listens_is_refused_in_seconds_before_anything_is_written(tmp_path, capsys, monkeypatch):
    """RAY_ADDRESS (or --address) at a port nothing listens on: ray.init would retry for minutes; the sweep says so at
    once (exit 2, one line), before Ray starts here or an experiment is created."""
    import socket

    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    study = tmp_path / "study.yaml"
    study.write_text(textwrap.dedent(GOOD))
    for env, args in ((f"127.0.0.1:{port}", []), (None, ["--address", f"ray://127.0.0.1:{port}"])):
        if env:
            monkeypatch.setenv("RAY_ADDRESS", env)
        else:
            monkeypatch.delenv("RAY_ADDRESS", raising=False)
        code, out, err = run_cli(["sweep", str(study), "--storage", str(tmp_path / "st"), *args], tmp_path, capsys)
        assert code == 2, err
        (line,) = err.strip().splitlines()
        shown = env or f"ray://127.0.0.1:{port}"
        assert line.startswith(f"ltkd: error: --address {shown}: cannot start or join Ray (nothing answers at 127.0.0.1:{port} ("), line
        assert "is the Ray head up?" in line
        assert not (tmp_path / "mlflow.db").exists()
    import ray

    assert not ray.is_initialized()
