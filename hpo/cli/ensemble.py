"""Commands for ensembles: ``promote``, ``ensembles``, ``predict``."""
from __future__ import annotations

import click

from hpo.cli._common import (
    artifacts_option,
    format_option,
    friendly,
    read_study_option,
    storage_option,
)
from hpo.cli.completion import complete_ensembles, complete_studies


@click.command()
@read_study_option
@click.option("--name", default=None, help="Ensemble name (default: <study>-<method>).")
@click.option("--method", type=click.Choice(["greedy", "topk"]), default="greedy",
              show_default=True, help="Greedy forward selection with replacement, or top-k.")
@click.option("--max-members", type=click.IntRange(min=1), default=5, show_default=True,
              help="Most distinct members (greedy) or k (topk).")
@click.option("--top", type=click.IntRange(min=1), default=20, show_default=True,
              help="Candidates: the best N completed trials.")
@storage_option
@artifacts_option
@friendly
def promote(study_name, name, method, max_members, top, storage, artifacts):
    """Turn the best trials of a study into an ensemble (manifest with lineage).

    Selects on one half of the validation people and reports macro-F1 on the other half too.
    """
    from hpo.ensemble.promote import promote as do_promote
    from hpo.run.study import load

    study = load(study_name, storage=storage)
    result = do_promote(study, name=name or f"{study.study_name}-{method}", method=method,
                        max_members=max_members, top=top,
                        artifacts=artifacts)
    click.echo(result.table())
    click.echo(f"manifest: {result.manifest_path}")


@click.command()
@artifacts_option
@format_option
@friendly
def ensembles(artifacts, fmt):
    """List promoted ensembles."""
    from hpo.ops.report import dumps
    from hpo.store.manifest import ensemble_rows, list_ensembles

    if fmt == "json":
        click.echo(dumps(ensemble_rows(artifacts=artifacts)))
        return
    rows = list_ensembles(artifacts=artifacts)
    if not rows:
        click.echo("no ensembles yet; make one with: hpo promote --study NAME")
    for row in rows:
        click.echo(row)


@click.command()
@click.option("--ensemble", default=None, shell_complete=complete_ensembles,
              help="An ensemble name (hpo ensembles) or manifest.")
@click.option("--study", "study_name", default=None, shell_complete=complete_studies,
              help="With --trial: predict one trial.")
@click.option("--trial", "trial_number", type=int, default=None, help="Trial number.")
@click.option("--data", "eval_dir", required=True, type=click.Path(),
              help="The eval folder (info.csv and images/).")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="Submission CSV to write (ImageID,ans).")
@click.option("--tta", type=click.Choice(["none", "flip"]), default="none", show_default=True)
@click.option("--vote", type=click.Choice(["soft", "hard"]), default="soft", show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--device", default="auto", show_default=True)
@storage_option
@artifacts_option
@friendly
def predict(ensemble, study_name, trial_number, eval_dir, out, tta, vote, batch_size, device,
            storage, artifacts):
    """Write a submission (ImageID,ans in info.csv order) from an ensemble or one trial."""
    from hpo.ensemble.predict import predict_submission

    if bool(ensemble) == (study_name is not None or trial_number is not None):
        raise click.UsageError("give either --ensemble NAME, or --study NAME --trial N")
    if ensemble is None and (study_name is None or trial_number is None):
        raise click.UsageError("--study and --trial go together")
    frame = predict_submission(ensemble=ensemble, study=study_name, trial=trial_number,
                               eval_dir=eval_dir, out=out, tta=tta == "flip", vote=vote,
                               batch_size=batch_size, device=device, storage=storage,
                               artifacts=artifacts)
    click.echo(f"wrote {len(frame)} predictions to {out}")
