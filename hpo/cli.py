"""The ``hpo`` command line (click). Every error of ours becomes one line and exit code 1."""
from __future__ import annotations

import functools
import logging
import os
import signal
import subprocess
import sys

import click

from trainer.errors import TrainerError

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
                        help="A study name from studies/ or a path to a study YAML file.")(fn)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log more (per-epoch lines, retries).")
def main(verbose: bool) -> None:
    """hpo: hyperparameter search for the mask / gender / age face competition.

    Studies are YAML files in studies/; trials train timm models with the trainer package and
    are recorded in an Optuna storage (SQLite by default, PostgreSQL for many machines).
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
              help="The competition train folder (overrides the study's data.train_dir).")
@click.option("--n-trials", type=click.IntRange(min=1), default=None,
              help="Trials in the study when done (default: the study file's n_trials).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Stop starting trials after this many seconds.")
@click.option("--gpus", default=None, metavar="0,1",
              help="One worker per listed GPU (sets CUDA_VISIBLE_DEVICES for each).")
@click.option("--workers", type=click.IntRange(min=1), default=1,
              help="Worker processes when --gpus is not given.")
@click.option("--heartbeat", type=click.IntRange(min=1), default=30,
              help="Seconds between heartbeats; silent trials are failed and retried.")
@_storage_option
@_artifacts_option
@_friendly
def launch(study_name, train_dir, n_trials, timeout, gpus, workers, heartbeat, storage,
           artifacts):
    """Create or resume a study and run workers until its budget is met.

    Starts one worker process per GPU in --gpus, or --workers processes, and shows the
    running trials, their epoch and metric, and the best trial so far.
    """
    from hpo.progress import watch
    from hpo.spec import load_study_spec
    from hpo.storage import mask_url, resolve_storage_url
    from hpo.worker import check_data, open_study

    spec = load_study_spec(study_name)
    check_data(spec, train_dir)
    url = resolve_storage_url(storage)
    study = open_study(spec, storage=url, train_dir=train_dir, heartbeat_interval=heartbeat)
    target = n_trials or spec.n_trials
    click.echo(f"study {spec.name} in {mask_url(url)}: {len(study.trials)} trials so far, "
               f"target {target or 'none'}, timeout {timeout or spec.timeout or 'none'}")
    devices = [g.strip() for g in gpus.split(",") if g.strip()] if gpus else [None] * workers
    # The URL travels in the environment, not argv: `ps` would show a password in argv.
    argv = [sys.executable, "-m", "hpo.cli", "worker", "--study", spec.path,
            "--heartbeat", str(heartbeat)]
    for flag, value in (("--data", train_dir), ("--n-trials", n_trials),
                        ("--timeout", timeout), ("--artifacts", artifacts)):
        if value is not None:
            argv += [flag, str(value)]
    procs = []
    for index, device in enumerate(devices):
        env = {**os.environ, "HPO_WORKER_INDEX": str(index), "HPO_STORAGE": url}
        if device is not None:
            env["CUDA_VISIBLE_DEVICES"] = device
        # own session: a terminal's Ctrl-C reaches only us; we forward one SIGTERM each
        procs.append(subprocess.Popen(argv, env=env, start_new_session=True))
    stopped = False

    def forward(signum, frame):
        nonlocal stopped
        stopped = True
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)

    old_int = signal.signal(signal.SIGINT, forward)
    old_term = signal.signal(signal.SIGTERM, forward)
    try:
        watch(study, procs, metric=spec.metric, target=target)
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)
    codes = [p.wait() for p in procs]
    if stopped:
        click.echo(f"stopped; running trials were recorded FAIL and will be retried. Resume "
                   f"with: hpo launch --study {spec.name}", err=True)
        sys.exit(130)
    if any(codes):
        raise click.ClickException(f"{sum(1 for c in codes if c)} of {len(codes)} workers "
                                   "exited with an error (see above)")
    _print_best(study, spec.metric)


@main.command()
@_study_option
@click.option("--data", "train_dir", default=None, type=click.Path(),
              help="The competition train folder on this machine.")
@click.option("--n-trials", type=click.IntRange(min=1), default=None,
              help="Trials in the study when done (default: the study file's n_trials).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Stop starting trials after this many seconds.")
@click.option("--heartbeat", type=click.IntRange(min=1), default=30,
              help="Seconds between heartbeats; silent trials are failed and retried.")
@_storage_option
@_artifacts_option
@_friendly
def worker(study_name, train_dir, n_trials, timeout, heartbeat, storage, artifacts):
    """Join a study from any machine that reaches its storage and run trials.

    Stops when the study's trial budget is met. Ctrl-C or SIGTERM records the running trial
    FAIL (it is retried from its last checkpoint later).
    """
    from hpo.spec import load_study_spec
    from hpo.worker import Budget, worker_main, worker_seed_offset

    spec = load_study_spec(study_name)
    code = worker_main(spec, storage=storage, artifacts=artifacts, train_dir=train_dir,
                       budget=Budget(n_trials or spec.n_trials, timeout or spec.timeout),
                       heartbeat_interval=heartbeat, seed_offset=worker_seed_offset())
    sys.exit(code)


# ---------------------------------------------------------------------------------------------
# looking at studies


@main.command()
@_storage_option
@_friendly
def studies(storage):
    """List the studies in the storage (and the study files in studies/)."""
    import optuna

    from hpo.spec import list_studies
    from hpo.storage import mask_url, open_storage, resolve_storage_url

    url = resolve_storage_url(storage)
    summaries = optuna.get_all_study_summaries(open_storage(url, heartbeat_interval=None))
    click.echo(f"storage {mask_url(url)}")
    if not summaries:
        click.echo("  no studies yet")
    for s in summaries:
        best = f"{s.best_trial.value:.4f}" if s.best_trial and s.best_trial.value is not None \
            else "-"
        click.echo(f"  {s.study_name:<24} trials {s.n_trials:<5} best {best}")
    click.echo(f"study files: {', '.join(list_studies()) or 'none'}")


def _load(study_name: str, storage: str | None):
    from hpo.spec import load_study_spec
    from hpo.worker import open_study

    spec = load_study_spec(study_name)
    return spec, open_study(spec, storage=storage, heartbeat_interval=None, create=False)


@main.command()
@_study_option
@_storage_option
@_friendly
def status(study_name, storage):
    """Show every trial: state, value, key parameters, epochs, duration, progress."""
    from hpo.progress import status_table

    spec, study = _load(study_name, storage)
    click.echo(status_table(study, metric=spec.metric))


@main.command()
@_study_option
@_storage_option
@_friendly
def best(study_name, storage):
    """Show the best completed trial: its value, metrics and parameters."""
    spec, study = _load(study_name, storage)
    _print_best(study, spec.metric)


def _print_best(study, metric: str) -> None:
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not done:
        raise click.ClickException(f"study {study.study_name} has no completed trial yet; "
                                   f"run: hpo launch --study {study.study_name}")
    trial = study.best_trial
    click.echo(f"best trial {trial.number}: {metric} {trial.value:.4f}")
    metrics = trial.user_attrs.get("metrics", {})
    shown = ", ".join(f"{k} {metrics[k]:.4f}" for k in
                      ("f1", "accuracy", "mask_f1", "gender_f1", "age_f1") if k in metrics)
    if shown:
        click.echo(f"  metrics: {shown} (epoch {trial.user_attrs.get('best_epoch')})")
    for key, value in trial.params.items():
        click.echo(f"  {key} = {value}")


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


# ---------------------------------------------------------------------------------------------
# ensembles


@main.command()
@_study_option
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

    spec, study = _load(study_name, storage)
    result = do_promote(study, name=name or f"{spec.name}-{method}", method=method,
                        max_members=max_members, top=top, storage=storage,
                        artifacts=artifacts)
    click.echo(result.table())
    click.echo(f"manifest: {result.manifest_path}")


@main.command()
@_artifacts_option
@_friendly
def ensembles(artifacts):
    """List promoted ensembles."""
    from hpo.ensemble import list_ensembles

    rows = list_ensembles(artifacts=artifacts)
    if not rows:
        click.echo("no ensembles yet; make one with: hpo promote --study NAME")
    for row in rows:
        click.echo(row)


@main.command()
@click.option("--ensemble", default=None, help="An ensemble name (hpo ensembles) or manifest.")
@click.option("--study", "study_name", default=None, help="With --trial: predict one trial.")
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
