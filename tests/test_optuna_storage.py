"""Optuna's storage opened by several processes at once on a fresh database: its constructor creates the
schema without a lock, so all but one creator used to fail ("table studies already exists", "UNIQUE
constraint failed: alembic_version"). A search and a process polling its database (`ltkd best`, a
test) race this way; every opener must get the storage."""

import subprocess
import sys
import time

OPENER = """
import sys, time
from pathlib import Path
from orchestrator.search.optuna_adapter import optuna_rdb_storage
folder = Path(sys.argv[1])
for round_ in range(int(sys.argv[2])):
    while not (folder / f"go{round_}").exists():  # all openers start a round together, racing on its empty database
        time.sleep(0.002)
    print(optuna_rdb_storage(f"sqlite:///{folder}/optuna{round_}.db").get_all_studies(), flush=True)
"""


def test_processes_opening_a_fresh_optuna_database_at_once_all_get_it(tmp_path):
    rounds = 4
    openers = [subprocess.Popen([sys.executable, "-c", OPENER, str(tmp_path), str(rounds)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(4)]
    time.sleep(4)  # each has imported Optuna and waits
    for round_ in range(rounds):
        (tmp_path / f"go{round_}").touch()
        time.sleep(0.5)
    for opener in openers:
        out, err = opener.communicate(timeout=120)
        assert opener.returncode == 0, err[-2000:]
        assert out.split("\n") == ["[]"] * rounds + [""]
