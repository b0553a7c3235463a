"""The ``hpo`` command line (click). Every error of ours becomes one line and exit code 1."""
from __future__ import annotations

import functools
import logging
import os
import sys

import click

from hpo.completion import complete_ensembles, complete_studies, complete_study_files
from trainer import TrainerError

log = logging.getLogger("hpo")

STORAGE_HELP = "Study storage URL (default: $HPO_STORAGE, else sqlite:///hpo.db)."
ARTIFACTS_HELP = "Artifact folder shared by workers (default: $HPO_ARTIFACTS, else ./artifacts)."


def _friendly(fn):
    """Run a command; our errors (and the trainer's) print as one line, exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except TrainerError as exc:  # HpoError derives from it
            raise click.ClickException(str(exc)) from None

    return wrapper


def _storage_option(fn):
    return click.option("--storage", default=None, metavar="URL", help=STORAGE_HELP)(fn)


def _artifacts_option(fn):
    return click.option("--artifacts", default=None, metavar="DIR", help=ARTIFACTS_HELP,
                        type=click.Path(file_okay=False))(fn)


def _study_option(fn):
    return click.option("--study", "study_name", required=True, metavar="NAME",
                        shell_complete=complete_study_files,
                        help="A study name from studies/ or a path to a study YAML file.")(fn)


def _max_failures_option(fn):
    return click.option("--max-failures", type=click.IntRange(min=0), default=3,
                        show_default=True,
                        help="Stop when this many trials in a row fail with the same reason "
                             "(0: never).")(fn)


def _run_options(fn):
    """--gpus, --workers and --heartbeat: the commands that start workers (launch, refit)."""
    fn = click.option("--heartbeat", type=click.IntRange(min=1), default=30,
                      help="Seconds between heartbeats; silent trials are failed and "
                           "retried.")(fn)
    fn = click.option("--workers", type=click.IntRange(min=1), default=1,
                      help="Worker processes when --gpus is not given.")(fn)
    return click.option("--gpus", default=None, metavar="0,1",
                        help="One worker per listed GPU (sets CUDA_VISIBLE_DEVICES for "
                             "each).")(fn)


def _format_option(fn):
    return click.option("-f", "--format", "fmt", type=click.Choice(["table", "json"]),
                        default="table", show_default=True, help="Output format.")(fn)


def _read_study_option(fn):
    return click.option("--study", "study_name", required=True, metavar="NAME",
                        shell_complete=complete_studies,
                        help="The study's name in the storage (no study file needed).")(fn)


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
        from hpo.storage import quiet_optuna

        quiet_optuna()


# ---------------------------------------------------------------------------------------------
# running studies


@main.command()
@_study_option
@click.option("--data", "train_dir", default=None, type=click.Path(),
              help="The competition train folder (default: the one the study recorded, else "
                   "the study file's data.train_dir).")
@click.option("--n-trials", type=click.IntRange(min=1), default=None,
              help="Trials in the study when done (default: the study file's n_trials).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Stop starting trials after this many seconds.")
@_run_options
@_max_failures_option
@_storage_option
@_artifacts_option
@_friendly
def launch(study_name, train_dir, n_trials, timeout, gpus, workers, heartbeat, max_failures,
           storage, artifacts):
    """Create or resume a study and run workers until its budget is met.

    Starts one worker process per GPU in --gpus, or --workers processes, and shows the
    running trials, their epoch and metric, and the best trial so far.
    """
    from hpo.launcher import devices_of, prepare_launch

    devices = devices_of(gpus, workers)
    plan = prepare_launch(study_name, storage=storage, train_dir=train_dir, n_trials=n_trials,
                          timeout=timeout, heartbeat=heartbeat, artifacts=artifacts,
                          max_failures=max_failures)
    _run_launch(plan, devices)


def _run_launch(plan, devices) -> None:
    """Run a prepared launch's workers until its budget is met; say how it ended."""
    from hpo.admin import failure_streak, streak_error
    from hpo.launcher import budget_met, run_workers
    from hpo.storage import mask_url
    from hpo.worker import STREAK_EXIT

    max_failures = plan.max_failures
    click.echo(f"study {plan.spec.name} in {mask_url(plan.url)}: {len(plan.study.trials)} "
               f"trials so far, target {plan.target or 'none'}, timeout "
               f"{plan.timeout or plan.spec.timeout or 'none'}, data {plan.train_dir or '-'}")
    met = budget_met(plan)
    if met:
        click.echo(met)
        _echo_best(plan.study, required=False)
        return
    codes, stopped = run_workers(plan, devices=devices)
    if stopped:
        click.echo("stopped; running trials were recorded FAIL and will be retried. Resume "
                   f"with: {plan.resume_hint()}", err=True)
        sys.exit(130)
    if STREAK_EXIT in codes:
        reason = failure_streak(plan.study, max_failures)
        raise streak_error(plan.spec.name, max_failures, reason or "see hpo status")
    if any(codes):
        raise click.ClickException(f"{sum(1 for c in codes if c)} of {len(codes)} workers "
                                   "exited with an error (see above)")
    _echo_best(plan.study)


@main.command()
@_study_option
@click.option("--data", "train_dir", default=None, type=click.Path(),
              help="The competition train folder on this machine (default: the one the study "
                   "recorded).")
@click.option("--n-trials", type=click.IntRange(min=1), default=None,
              help="Trials in the study when done (default: the study file's n_trials).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Stop starting trials after this many seconds.")
@click.option("--heartbeat", type=click.IntRange(min=1), default=30,
              help="Seconds between heartbeats; silent trials are failed and retried.")
@_max_failures_option
@_storage_option
@_artifacts_option
@_friendly
def worker(study_name, train_dir, n_trials, timeout, heartbeat, max_failures, storage,
           artifacts):
    """Join a study from any machine that reaches its storage and run trials.

    The study file comes from this machine, else from the text the study recorded. Stops when
    the study's trial budget is met. Ctrl-C or SIGTERM records the running trial FAIL (it is
    retried from its last checkpoint later).
    """
    from hpo.budget import Budget
    from hpo.preflight import check_models
    from hpo.study import data_folder, spec_for, worker_seed_offset
    from hpo.worker import worker_main

    spec = spec_for(study_name, storage=storage)
    train_dir = data_folder(spec.name, train_dir, storage=storage)
    if os.environ.get("HPO_LAUNCHED") != "1":  # hpo launch ran it for its workers
        check_models(spec, train_dir=train_dir)
    code = worker_main(spec, storage=storage, artifacts=artifacts, train_dir=train_dir,
                       budget=Budget(n_trials or spec.n_trials, timeout or spec.timeout),
                       heartbeat_interval=heartbeat, seed_offset=worker_seed_offset(),
                       max_failures=max_failures)
    sys.exit(code)


# ---------------------------------------------------------------------------------------------
# looking at studies: from the storage alone, never writing


@main.command()
@_storage_option
@_format_option
@_friendly
def studies(storage, fmt):
    """List the studies in the storage (any Optuna study), and the study files found here."""
    from hpo.report import dumps, studies_data, studies_table
    from hpo.storage import mask_url, resolve_storage_url
    from hpo.study import summaries
    from hpo.studyfiles import list_studies

    url = resolve_storage_url(storage)
    rows = studies_data(summaries(url))
    if fmt == "json":
        click.echo(dumps(rows))
    else:
        click.echo(studies_table(rows, storage=mask_url(url), files=list_studies()))


@main.command()
@_read_study_option
@click.option("--sort", type=click.Choice(["number", "value"]), default="number",
              show_default=True, help="Order trials by number, or by value (best first).")
@_storage_option
@_format_option
@_friendly
def status(study_name, sort, storage, fmt):
    """Show every trial: state, value, every parameter, epochs, duration, failure reason."""
    from hpo.report import dumps, status_data, status_table
    from hpo.study import load, record_of

    study = load(study_name, storage=storage)
    data = status_data(study, record_of(study), sort=sort)
    click.echo(dumps(data) if fmt == "json" else status_table(data))


@main.command()
@_read_study_option
@_storage_option
@_format_option
@_friendly
def best(study_name, storage, fmt):
    """Show the best completed trial: its value, metrics and parameters."""
    from hpo.study import load

    _echo_best(load(study_name, storage=storage), fmt=fmt)


def _echo_best(study, fmt: str = "table", *, required: bool = True) -> None:
    from hpo.report import best_data, best_table, dumps
    from hpo.study import record_of

    data = best_data(study, record_of(study))
    if data is None and not required:
        return
    if data is None:
        raise click.ClickException(f"study {study.study_name} has no completed trial yet; "
                                   f"run: hpo launch --study {study.study_name}")
    click.echo(dumps(data) if fmt == "json" else best_table(data))


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to bind; 0.0.0.0 exposes the dashboard to the network.")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True)
@_storage_option
@_artifacts_option
@_friendly
def dashboard(host, port, storage, artifacts):
    """Serve optuna-dashboard on the study storage and artifact store."""
    from hpo.dashboard import serve

    serve(storage=storage, artifacts=artifacts, host=host, port=port)


@main.command()
@click.argument("folder", default="demo", type=click.Path(file_okay=False))
@_friendly
def demo(folder):
    """The whole flow on generated data: make demo data in FOLDER (default ./demo), run the
    smoke study, promote an ensemble and write FOLDER/submission.csv."""
    from hpo.demo import run_demo

    result = run_demo(folder, echo=click.echo)
    best = f"{result.best_f1:.4f}" if result.best_f1 is not None else "-"
    click.echo(f"done: best trial f1 {best}, ensemble f1 {result.ensemble_f1:.4f} (validation "
               f"people). Look around with: hpo status --study smoke --storage "
               f"{result.storage}")


# ---------------------------------------------------------------------------------------------
# looking after studies


@main.command()
@_read_study_option
@_storage_option
@_friendly
def retry(study_name, storage):
    """Queue the failed trials of a study again (same parameters; they resume from their last
    checkpoint and do not count against the budget again). Run hpo launch to run them."""
    from hpo.admin import retry_failed
    from hpo.study import load

    study = load(study_name, storage=storage)
    queued = retry_failed(study)
    if not queued:
        click.echo(f"study {study.study_name} has no failed trial to retry")
        return
    click.echo(f"queued {len(queued)} failed trial(s) of {study.study_name} again: "
               f"{', '.join(map(str, queued))}; run them with: hpo launch --study "
               f"{study.study_name}")


@main.command()
@_read_study_option
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@_storage_option
@_artifacts_option
@_friendly
def delete(study_name, yes, storage, artifacts):
    """Delete a study: its trials in the storage, its stored files and trial folders."""
    from hpo.admin import delete_study
    from hpo.progress import size_text
    from hpo.study import load

    study = load(study_name, storage=storage)
    n = len(study.trials)
    if not yes:
        click.confirm(f"delete study {study.study_name} with {n} trial(s) and its files?",
                      abort=True)
    done = delete_study(study, storage=storage, artifacts=artifacts)
    click.echo(f"deleted study {done.name}: {done.trials} trial(s), {done.files} stored "
               f"file(s), {size_text(done.bytes)} freed")


@main.command()
@_read_study_option
@click.option("--keep-top", type=click.IntRange(min=1), default=5, show_default=True,
              help="The best N completed trials keep their checkpoint.")
@click.option("--dry-run", is_flag=True, help="Say what would go; remove nothing.")
@_storage_option
@_artifacts_option
@_friendly
def gc(study_name, keep_top, dry_run, storage, artifacts):
    """Remove checkpoints no ensemble and no top trial needs (running trials and the
    checkpoints a queued retry resumes from are left alone)."""
    from hpo.admin import collect_garbage
    from hpo.study import load

    study = load(study_name, storage=storage)
    click.echo(collect_garbage(study, artifacts=artifacts, keep_top=keep_top,
                               dry_run=dry_run).text())


# ---------------------------------------------------------------------------------------------
# ensembles


@main.command()
@_read_study_option
@click.option("--name", default=None, help="Ensemble name (default: <study>-<method>).")
@click.option("--method", type=click.Choice(["greedy", "topk"]), default="greedy",
              show_default=True, help="Greedy forward selection with replacement, or top-k.")
@click.option("--max-members", type=click.IntRange(min=1), default=5, show_default=True,
              help="Most distinct members (greedy) or k (topk).")
@click.option("--top", type=click.IntRange(min=1), default=20, show_default=True,
              help="Candidates: the best N completed trials.")
@_storage_option
@_artifacts_option
@_friendly
def promote(study_name, name, method, max_members, top, storage, artifacts):
    """Turn the best trials of a study into an ensemble (manifest with lineage).

    Selects on one half of the validation people and reports macro-F1 on the other half too.
    """
    from hpo.ensemble import promote as do_promote
    from hpo.study import load

    study = load(study_name, storage=storage)
    result = do_promote(study, name=name or f"{study.study_name}-{method}", method=method,
                        max_members=max_members, top=top, storage=storage,
                        artifacts=artifacts)
    click.echo(result.table())
    click.echo(f"manifest: {result.manifest_path}")


@main.command()
@_read_study_option
@click.option("--top", type=click.IntRange(min=1), default=3, show_default=True,
              help="Refit the best N completed configurations (distinct parameters).")
@click.option("--ensemble", default=None, shell_complete=complete_ensembles,
              help="Refit the members of this promoted ensemble instead of the top N.")
@click.option("--folds", type=int, default=5, show_default=True,
              help="k: person-level folds; each configuration trains k models.")
@click.option("--data", "train_dir", default=None, type=click.Path(),
              help="The competition train folder (default: the one the study recorded).")
@click.option("--full", is_flag=True,
              help="Then train each configuration on every training person for its folds' "
                   "median best epoch; hpo predict averages it with the fold models.")
@_run_options
@_max_failures_option
@_storage_option
@_artifacts_option
@_friendly
def refit(study_name, top, ensemble, folds, train_dir, full, gpus, workers, heartbeat,
          max_failures, storage, artifacts):
    """Train a study's best configurations again on k person-level folds.

    The fold runs are trials of the companion study NAME-refit (any worker can join it with
    hpo worker --study NAME-refit; running this again resumes it). Then hpo promote --study
    NAME-refit selects an ensemble on the out-of-fold probabilities of every training person.
    """
    from hpo.launcher import devices_of
    from hpo.refit import prepare_full, prepare_refit

    devices = devices_of(gpus, workers)
    plan, refit_plan = prepare_refit(
        study_name, top=None if ensemble else top, ensemble=ensemble, folds=folds,
        storage=storage, train_dir=train_dir, heartbeat=heartbeat, artifacts=artifacts,
        max_failures=max_failures)
    trials = ", ".join(str(c["source_trial"]) for c in refit_plan.configs)
    click.echo(f"refit of {refit_plan.source}: trial(s) {trials} x {folds} folds")
    _run_launch(plan, devices)
    if full:
        plan, added, left = prepare_full(plan, refit_plan)
        for line in left:
            click.echo(f"full model left out: {line}", err=True)
        click.echo(f"full models (every person): {added} enqueued")
        _run_launch(plan, devices)
    click.echo(f"next: hpo promote --study {refit_plan.name}")


@main.command()
@_artifacts_option
@_format_option
@_friendly
def ensembles(artifacts, fmt):
    """List promoted ensembles."""
    from hpo.manifest import ensemble_rows, list_ensembles
    from hpo.report import dumps

    if fmt == "json":
        click.echo(dumps(ensemble_rows(artifacts=artifacts)))
        return
    rows = list_ensembles(artifacts=artifacts)
    if not rows:
        click.echo("no ensembles yet; make one with: hpo promote --study NAME")
    for row in rows:
        click.echo(row)


@main.command()
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
@_storage_option
@_artifacts_option
@_friendly
def predict(ensemble, study_name, trial_number, eval_dir, out, tta, vote, batch_size, device,
            storage, artifacts):
    """Write a submission (ImageID,ans in info.csv order) from an ensemble or one trial."""
    from hpo.predict import predict_submission

    if bool(ensemble) == (study_name is not None or trial_number is not None):
        raise click.UsageError("give either --ensemble NAME, or --study NAME --trial N")
    if ensemble is None and (study_name is None or trial_number is None):
        raise click.UsageError("--study and --trial go together")
    frame = predict_submission(ensemble=ensemble, study=study_name, trial=trial_number,
                               eval_dir=eval_dir, out=out, tta=tta == "flip", vote=vote,
                               batch_size=batch_size, device=device, storage=storage,
                               artifacts=artifacts)
    click.echo(f"wrote {len(frame)} predictions to {out}")


def _run() -> None:  # python -m hpo.cli
    main(prog_name="hpo")


if __name__ == "__main__":
    _run()
