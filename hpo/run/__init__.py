"""Running a study: its lifecycle, the objective, workers and the launcher.

- :mod:`~hpo.run.study`: the two doors, create-or-resume (from a study file) and load (from the
  storage alone, never writing);
- :mod:`~hpo.run.objective`: one trial (the only caller of ``trainer.fit``);
- :mod:`~hpo.run.worker`: one process running trials until the budget is met
  (:mod:`~hpo.run.budget`), with retries and failure streaks (:mod:`~hpo.run.lineage`);
- :mod:`~hpo.run.launcher`: several workers on this machine, their progress
  (:mod:`~hpo.run.progress`), pre-flight checks (:mod:`~hpo.run.preflight`,
  :mod:`~hpo.run.diskcheck`);
- :mod:`~hpo.run.refit_plan`: the k-fold refit as trials of a companion study.
"""
