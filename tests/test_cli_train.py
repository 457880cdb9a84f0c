"""`ltkd train`: one trial by hand, a teacher saved and then distilled from."""
import json

from orchestrator.cli import main


def test_train_a_teacher_then_distil_from_its_checkpoint(tmp_path, capsys):
    teacher = tmp_path / "teacher"
    assert main(["train", "--model", "cnn_w16", "--epochs", "2", "--save", str(teacher)]) == 0
    out = capsys.readouterr().out
    assert (teacher / "model.pt").is_file()
    assert [line.split()[1] for line in out.splitlines() if line.startswith("epoch")] == ["1", "2"]
    assert main(["train", "--method", "ltkd", "--teacher-checkpoint", str(teacher), "--param", "beta=2",
                 "--epochs", "2"]) == 0
    out = capsys.readouterr().out
    result = json.loads(out[out.index("{"):])
    assert set(result["final"]) == {"acc_all", "acc_head", "acc_medium", "acc_tail"}
    assert 0 <= result["final"]["acc_all"] <= 100 and result["best_epoch"] in (1, 2)
