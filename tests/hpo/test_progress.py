"""The launch's progress line for running trials, with and without a validation metric."""
from __future__ import annotations

import optuna

from hpo.run.progress import progress_line


def test_running_trials_show_their_epoch_and_a_metric_only_when_they_have_one(tmp_path):
    study = optuna.create_study(study_name="p", storage=f"sqlite:///{tmp_path}/p.db",
                                direction="maximize")
    validated, full = study.ask(), study.ask()
    validated.set_user_attr("progress", {"epoch": 2, "epochs": 4, "f1": 0.4321})
    full.set_user_attr("progress", {"epoch": 1, "epochs": 3})  # hpo refit --full: no metric
    line = progress_line(study, metric="f1", target=4)
    assert "running: #0 ep 2/4 0.432, #1 ep 1/3" in line
    assert line.endswith("#1 ep 1/3")
