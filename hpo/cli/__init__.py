"""The ``hpo`` command line (click). Every error of ours becomes one line and exit code 1.

One module per group of commands (:mod:`~hpo.cli.run`, :mod:`~hpo.cli.read`,
:mod:`~hpo.cli.admin`, :mod:`~hpo.cli.ensemble`, :mod:`~hpo.cli.tools`); this module is the
group that holds them. Commands import the layers below inside their bodies, so ``hpo --help``
and shell completion start without torch.
"""
from __future__ import annotations

import logging

import click

from hpo.cli import admin, ensemble, read, run, tools

__all__ = ["main"]

log = logging.getLogger("hpo")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="hpo", prog_name="hpo")
@click.option("-v", "--verbose", is_flag=True, help="Log more (per-epoch lines, retries).")
def main(verbose: bool) -> None:
    """hpo: hyperparameter search for the mask / gender / age face competition.

    Studies are YAML files in studies/; trials train timm models with the trainer package and
    are recorded in an Optuna storage (SQLite by default, PostgreSQL for many machines).
    Reading a study (status, best, studies, promote, predict, dashboard) needs only the
    storage: no study file and no data folder.
    """
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not verbose:
        from hpo.store.storage import quiet_optuna

        quiet_optuna()


for _command in (run.launch, run.worker, read.studies, read.status, read.best, tools.dashboard,
                 tools.demo, admin.retry, admin.delete, admin.gc, ensemble.promote, run.refit,
                 ensemble.ensembles, ensemble.predict):
    main.add_command(_command)
