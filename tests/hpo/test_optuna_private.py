"""Optuna's private names that hpo uses still exist in the installed Optuna, and no module but
hpo/store/optuna_private.py reaches for one."""
from __future__ import annotations

import importlib
import re
from pathlib import Path

import optuna
import pytest

from hpo.store import optuna_private
from hpo.store.optuna_private import PRIVATE_NAMES

REPO = Path(__file__).resolve().parents[2]


def _owner(dotted: str):
    module, _, attr = dotted.rpartition(".")
    try:
        return importlib.import_module(dotted)
    except ModuleNotFoundError:
        return getattr(importlib.import_module(module), attr)


@pytest.mark.parametrize(("owner", "name"), PRIVATE_NAMES,
                         ids=[f"{o}.{n}" for o, n in PRIVATE_NAMES])
def test_each_private_name_exists_in_the_installed_optuna(owner, name, tmp_path):
    target = _owner(owner)
    if hasattr(target, name):
        return
    # Instance attributes: look on a real study and trial.
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'x.db'}")
    trial = study.ask()
    instances = {"optuna.study.Study": study, "optuna.trial.Trial": trial,
                 "optuna.trial.FrozenTrial": study.trials[0],
                 "optuna.storages._cached_storage._CachedStorage": study._storage}
    assert hasattr(instances[owner], name), (f"optuna {optuna.__version__} no longer has "
                                             f"{owner}.{name}; adapt hpo/store/optuna_private.py")


def test_the_accessors_read_a_real_study(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'x.db'}", heartbeat_interval=60)
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    assert optuna_private.trial_id(trial) == optuna_private.trial_id(study.trials[0])
    assert isinstance(optuna_private.study_id(study), int)
    backend = optuna_private.unwrap_cache(optuna_private.study_storage(study))
    assert isinstance(backend, optuna.storages.RDBStorage)
    assert optuna_private.cached_frozen_trial(trial).number == trial.number
    assert optuna_private.stale_trial_ids(backend, study) == []  # nothing silent yet


_PRIVATE = re.compile(r"\._(storage|study_id|trial_id|backend|cached_frozen_trial)\b|"
                      r"optuna\.storages\._|_get_stale_trial_ids\(")


def test_no_other_module_uses_a_private_optuna_name():
    offenders = []
    for path in sorted((REPO / "hpo").rglob("*.py")):
        if path.name == "optuna_private.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if _PRIVATE.search(code) and "def _get_stale_trial_ids" not in code:
                offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not offenders, "private Optuna names outside hpo/store/optuna_private.py:\n" + \
        "\n".join(offenders)
