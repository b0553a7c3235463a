"""Study files: finding, reading, parsing and checking them, and the search space they declare.

- :mod:`~hpo.studyfile.files`: where study files are found, reading YAML safely;
- :mod:`~hpo.studyfile.spec`: :class:`~hpo.studyfile.spec.StudySpec`, the validated, frozen form;
- :mod:`~hpo.studyfile.parse` (and ``_space_parse``, ``_checks``, ``_trainer_keys``): the parser;
- :mod:`~hpo.studyfile.samplers`: samplers and pruners, declared once;
- :mod:`~hpo.studyfile.space`: the space turned into Optuna suggestions and trainer configs;
- :mod:`~hpo.studyfile.compare`: two versions of a study file, and whether trials stay comparable.

Imports only :mod:`hpo.errors` and the trainer: a study file is read without any storage.
"""
