"""Commands that look after studies: ``retry``, ``delete``, ``gc``."""
from __future__ import annotations

import click

from hpo.cli._common import (
    artifacts_option,
    friendly,
    read_study_option,
    storage_option,
)


@click.command()
@read_study_option
@storage_option
@friendly
def retry(study_name, storage):
    """Queue the failed trials of a study again (same parameters; they resume from their last
    checkpoint and do not count against the budget again). Run hpo launch to run them."""
    from hpo.run.lineage import retry_failed
    from hpo.run.study import load

    study = load(study_name, storage=storage)
    queued = retry_failed(study)
    if not queued:
        click.echo(f"study {study.study_name} has no failed trial to retry")
        return
    click.echo(f"queued {len(queued)} failed trial(s) of {study.study_name} again: "
               f"{', '.join(map(str, queued))}; run them with: hpo launch --study "
               f"{study.study_name}")


@click.command()
@read_study_option
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--force", is_flag=True,
              help="Delete even while trials are RUNNING (only when their workers are dead).")
@storage_option
@artifacts_option
@friendly
def delete(study_name, yes, force, storage, artifacts):
    """Delete a study: its trials in the storage, its stored files and trial folders.

    Refused while any trial is RUNNING (a live worker would crash); --force deletes anyway.
    """
    from hpo.ops.admin import check_not_running, delete_study
    from hpo.run.progress import size_text
    from hpo.run.study import load

    study = load(study_name, storage=storage)
    if not force:
        check_not_running(study)  # before asking: a refusal needs no answer
    n = len(study.trials)
    if not yes:
        click.confirm(f"delete study {study.study_name} with {n} trial(s) and its files?",
                      abort=True)
    done = delete_study(study, storage=storage, artifacts=artifacts, force=force)
    click.echo(f"deleted study {done.name}: {done.trials} trial(s), {done.files} stored "
               f"file(s), {size_text(done.bytes)} freed")


@click.command()
@read_study_option
@click.option("--keep-top", type=click.IntRange(min=1), default=5, show_default=True,
              help="The best N completed trials keep their checkpoint.")
@click.option("--dry-run", is_flag=True, help="Say what would go; remove nothing.")
@storage_option
@artifacts_option
@friendly
def gc(study_name, keep_top, dry_run, storage, artifacts):
    """Remove checkpoints no ensemble and no top trial needs (running trials and the
    checkpoints a queued retry resumes from are left alone)."""
    from hpo.ops.admin import collect_garbage
    from hpo.run.study import load

    study = load(study_name, storage=storage)
    click.echo(collect_garbage(study, artifacts=artifacts, keep_top=keep_top,
                               dry_run=dry_run).text())
