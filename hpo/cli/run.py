"""Commands that run trials: ``launch``, ``worker``, ``refit``."""
from __future__ import annotations

import os
import sys

import click

from hpo.cli._common import (
    artifacts_option,
    cpus_option,
    echo_best,
    friendly,
    max_failures_option,
    read_study_option,
    run_options,
    storage_option,
    study_option,
)
from hpo.cli.completion import complete_ensembles


@click.command()
@study_option
@click.option("--data", "train_dir", default=None, type=click.Path(),
              help="The competition train folder (default: the one the study recorded, else "
                   "the study file's data.train_dir).")
@click.option("--n-trials", type=click.IntRange(min=1), default=None,
              help="Trials in the study when done (default: the study file's n_trials).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Stop starting trials after this many seconds.")
@run_options
@max_failures_option
@storage_option
@artifacts_option
@friendly
def launch(study_name, train_dir, n_trials, timeout, gpus, workers, heartbeat, cpus,
           max_failures, storage, artifacts):
    """Create or resume a study and run workers until its budget is met.

    Starts one worker process per GPU in --gpus, or --workers processes, and shows the
    running trials, their epoch and metric, and the best trial so far.
    """
    from hpo.run.cpu import cpu_share
    from hpo.run.launcher import devices_of, prepare_launch

    devices = devices_of(gpus, workers)
    share = cpu_share(len(devices), cpus=cpus)  # checked before anything is created
    plan = prepare_launch(study_name, storage=storage, train_dir=train_dir, n_trials=n_trials,
                          timeout=timeout, heartbeat=heartbeat, artifacts=artifacts,
                          max_failures=max_failures)
    run_launch(plan, devices, share)


def run_launch(plan, devices, share: int) -> None:
    """Run a prepared launch's workers until its budget is met; say how it ended."""
    from hpo.run.launcher import budget_met, run_workers
    from hpo.run.lineage import failure_streak, streak_error
    from hpo.run.worker import STREAK_EXIT

    max_failures = plan.max_failures
    click.echo(f"study {plan.spec.name} in {plan.storage.masked}: {len(plan.study.trials)} "
               f"trials so far, target {plan.target or 'none'}, timeout "
               f"{plan.timeout or plan.spec.timeout or 'none'}, data {plan.train_dir or '-'}")
    met = budget_met(plan)
    if met:
        click.echo(met)
        echo_best(plan.study, required=False)
        return
    codes, stopped = run_workers(plan, devices=devices, share=share)
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
    echo_best(plan.study)


@click.command()
@study_option
@click.option("--data", "train_dir", default=None, type=click.Path(),
              help="The competition train folder on this machine (default: the one the study "
                   "recorded).")
@click.option("--n-trials", type=click.IntRange(min=1), default=None,
              help="Trials in the study when done (default: the study file's n_trials).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Stop starting trials after this many seconds.")
@click.option("--heartbeat", type=click.IntRange(min=1), default=30,
              help="Seconds between heartbeats; silent trials are failed and retried.")
@cpus_option
@max_failures_option
@storage_option
@artifacts_option
@friendly
def worker(study_name, train_dir, n_trials, timeout, heartbeat, cpus, max_failures, storage,
           artifacts):
    """Join a study from any machine that reaches its storage and run trials.

    The study file comes from this machine, else from the text the study recorded. Stops when
    the study's trial budget is met. Ctrl-C or SIGTERM records the running trial FAIL (it is
    retried from its last checkpoint later).
    """
    from hpo.run.budget import Budget
    from hpo.run.cpu import apply_share, cpu_share
    from hpo.run.preflight import check_models
    from hpo.run.study import data_folder, spec_for, worker_seed_offset
    from hpo.run.worker import worker_main

    # --cpus: this worker's share when others run here; else the launcher's ($HPO_CPUS)
    apply_share(cpu_share(1, cpus=cpus) if cpus is not None else None)
    spec = spec_for(study_name, storage=storage)
    train_dir = data_folder(spec.name, train_dir, storage=storage)
    if os.environ.get("HPO_LAUNCHED") != "1":  # hpo launch ran it for its workers
        check_models(spec, train_dir=train_dir)
    code = worker_main(spec, storage=storage, artifacts=artifacts, train_dir=train_dir,
                       budget=Budget(n_trials or spec.n_trials, timeout or spec.timeout),
                       heartbeat_interval=heartbeat, seed_offset=worker_seed_offset(),
                       max_failures=max_failures)
    sys.exit(code)


@click.command()
@read_study_option
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
@run_options
@max_failures_option
@storage_option
@artifacts_option
@friendly
def refit(study_name, top, ensemble, folds, train_dir, full, gpus, workers, heartbeat, cpus,
          max_failures, storage, artifacts):
    """Train a study's best configurations again on k person-level folds.

    The fold runs are trials of the companion study NAME-refit (any worker can join it with
    hpo worker --study NAME-refit; running this again resumes it). Then hpo promote --study
    NAME-refit selects an ensemble on the out-of-fold probabilities of every training person.
    """
    from hpo.ensemble.refit import prepare_full, prepare_refit
    from hpo.run.cpu import cpu_share
    from hpo.run.launcher import devices_of

    devices = devices_of(gpus, workers)
    share = cpu_share(len(devices), cpus=cpus)
    plan, refit_plan = prepare_refit(
        study_name, top=None if ensemble else top, ensemble=ensemble, folds=folds,
        storage=storage, train_dir=train_dir, heartbeat=heartbeat, artifacts=artifacts,
        max_failures=max_failures)
    trials = ", ".join(str(c["source_trial"]) for c in refit_plan.configs)
    click.echo(f"refit of {refit_plan.source}: trial(s) {trials} x {folds} folds")
    run_launch(plan, devices, share)
    if full:
        plan, added, left = prepare_full(plan, refit_plan)
        for line in left:
            click.echo(f"full model left out: {line}", err=True)
        click.echo(f"full models (every person): {added} enqueued")
        run_launch(plan, devices, share)
    click.echo(f"next: hpo promote --study {refit_plan.name}")
