"""Looking after studies: reports, delete and gc, the dashboard, the demo.

- :mod:`~hpo.ops.report`: the tables of ``hpo status``, ``best``, ``studies``;
- :mod:`~hpo.ops.admin`: ``hpo delete`` and ``hpo gc``;
- :mod:`~hpo.ops.dashboard`: optuna-dashboard on a study storage and its artifact store;
- :mod:`~hpo.ops.demo`: ``hpo demo``, the whole flow on drawn faces.
"""
