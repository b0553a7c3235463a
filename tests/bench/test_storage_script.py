"""``bench/storage.py`` at toy scale: it must keep running, and count commits honestly."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from bench.storage_probe import written_table
from tests.conftest import REPO


@pytest.mark.parametrize(("statement", "table"), [
    ('INSERT INTO trial_user_attributes (trial_id, "key", value_json) VALUES (?, ?, ?) '
     "ON CONFLICT (trial_id, key) DO UPDATE SET value_json = excluded.value_json",
     "trial_user_attributes"),
    ("UPDATE trials SET state=%(state)s WHERE trials.trial_id = %(trial_id_1)s", "trials"),
    ('  delete from "trial_heartbeats" where trial_id = 1', "trial_heartbeats"),
    ("INSERT OR REPLACE INTO version_info VALUES (1)", "version_info"),
    ("SELECT trials.state FROM trials WHERE trials.trial_id = ? FOR UPDATE", None),
    ("PRAGMA journal_mode", None),
])
def test_written_table(statement, table):
    assert written_table(statement) == table


@pytest.mark.slow
def test_side_by_side_on_sqlite(tmp_path):
    """Bare Optuna and run_worker, one worker each, on one SQLite file: the table and the
    RESULT line carry ms/trial and commits/trial, and the batched writes show in them."""
    out = subprocess.run(
        [sys.executable, "bench/storage.py", "--storage", f"sqlite:///{tmp_path}/load.db",
         "--workers", "1", "--trials", "8", "--sleep-ms", "0", "--sampler", "random",
         "--sequential-baseline"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.strip().splitlines()
    last = lines[-1]
    match = re.fullmatch(
        r"RESULT storage=sqlite workers=1 trials=8 failed=0 running=0 lock_errors=0 "
        r"trials_per_s=\d+\.\d\d overhead_ms_per_trial=\d+\.\d commits_per_trial=(\d+\.\d) "
        r"write_commits_per_trial=(\d+\.\d)", last)
    assert match, last
    bare = next(line for line in lines if line.startswith("BARE storage=sqlite workers=1"))
    bare_writes = float(re.search(r"write_commits_per_trial=(\d+\.\d)", bare).group(1))
    # run_worker's trial adds a handful of writes to Optuna's own (start, progress, results,
    # heartbeat), not one per attribute (that was 30+).
    assert bare_writes < float(match.group(2)) <= bare_writes + 7, (
        "run_worker wrote attributes one transaction each: hpo/run/worker.py must hand the "
        "study's storage to the Objective (storage=hpo.store.storage.storage_of(study))\n"
        + out.stdout)
    table = lines[lines.index(next(x for x in lines if x.startswith("SIDE BY SIDE"))) + 1:]
    assert table[0].split()[:4] == ["storage", "run", "trials", "ms/trial"]
    assert table[1].startswith("sqlite      optuna bare x1")
    assert table[2].startswith("sqlite      hpo run_worker x1")
