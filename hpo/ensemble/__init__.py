"""From trials to a submission: selection, promotion, refit and prediction.

- :mod:`~hpo.ensemble.selection`: greedy forward selection and top-k, macro-F1, person halves;
- :mod:`~hpo.ensemble.promote`: ``hpo promote``, a study's trials into an ensemble manifest;
- :mod:`~hpo.ensemble.refit`: ``hpo refit``, the best configurations on k folds (above the
  launcher; the plan is :mod:`hpo.run.refit_plan`);
- :mod:`~hpo.ensemble.predict`: ``hpo predict``, an ensemble's submission file.
"""
