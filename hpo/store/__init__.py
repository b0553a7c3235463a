"""Where studies and their files live: the bottom layer of ``hpo`` (above :mod:`hpo.errors`).

- :mod:`~hpo.store.secrets`: storage URLs with their secrets masked for every line printed;
- :mod:`~hpo.store.storage`: opening a storage once (SQLite or PostgreSQL), retries through
  database outages (:mod:`~hpo.store.retry`), a lock for creating one (:mod:`~hpo.store.lock`);
- :mod:`~hpo.store.optuna_private`: the only module that touches Optuna's private API;
- :mod:`~hpo.store.records`: the trial record's keys and readers (what a trial stores);
- :mod:`~hpo.store.artifacts`: the artifact store (a trial's files, checked by sha256);
- :mod:`~hpo.store.manifest`: ensemble manifests in the artifact store.

Nothing here knows study files, trials being run or ensembles being chosen.
"""
