"""Commands that look at studies, from the storage alone and never writing: ``studies``,
``status``, ``best``."""
from __future__ import annotations

import click

from hpo.cli._common import (
    echo_best,
    format_option,
    friendly,
    read_study_option,
    storage_option,
)


@click.command()
@storage_option
@format_option
@friendly
def studies(storage, fmt):
    """List the studies in the storage (any Optuna study), and the study files found here."""
    from hpo.ops.report import dumps, studies_data, studies_table
    from hpo.run.study import summaries
    from hpo.studyfile.files import list_studies

    rows = studies_data(summaries(storage))
    if fmt == "json":
        click.echo(dumps(rows))
    else:
        click.echo(studies_table(rows, storage=storage.masked, files=list_studies()))


@click.command()
@read_study_option
@click.option("--sort", type=click.Choice(["number", "value"]), default="number",
              show_default=True, help="Order trials by number, or by value (best first).")
@storage_option
@format_option
@friendly
def status(study_name, sort, storage, fmt):
    """Show every trial: state, value, every parameter, epochs, duration, failure reason."""
    from hpo.ops.report import dumps, status_data, status_table
    from hpo.run.study import load, record_of

    study = load(study_name, storage=storage)
    data = status_data(study, record_of(study), sort=sort)
    click.echo(dumps(data) if fmt == "json" else status_table(data))


@click.command()
@read_study_option
@storage_option
@format_option
@friendly
def best(study_name, storage, fmt):
    """Show the best completed trial: its value, metrics and parameters."""
    from hpo.run.study import load

    echo_best(load(study_name, storage=storage), fmt=fmt)
