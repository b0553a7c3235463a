"""The browser and the demo: ``dashboard``, ``demo``."""
from __future__ import annotations

import click

from hpo.cli._common import (
    artifacts_option,
    friendly,
    storage_option,
)


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to bind; 0.0.0.0 exposes the dashboard to the network.")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True)
@storage_option
@artifacts_option
@friendly
def dashboard(host, port, storage, artifacts):
    """Serve optuna-dashboard on the study storage and artifact store."""
    from hpo.ops.dashboard import serve

    serve(storage=storage, artifacts=artifacts, host=host, port=port)


@click.command()
@click.argument("folder", default="demo", type=click.Path(file_okay=False))
@friendly
def demo(folder):
    """The whole flow on generated data: make demo data in FOLDER (default ./demo), run the
    smoke study, promote an ensemble and write FOLDER/submission.csv."""
    from hpo.ops.demo import run_demo

    result = run_demo(folder, echo=click.echo)
    best = f"{result.best_f1:.4f}" if result.best_f1 is not None else "-"
    click.echo(f"done: best trial f1 {best}, ensemble f1 {result.ensemble_f1:.4f} (validation "
               f"people). Look around with: hpo status --study smoke --storage "
               f"{result.storage}")
