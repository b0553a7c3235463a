"""What every command shares: one-line errors, the common options, the best-trial table.

The ``--storage`` option is the command's edge: its value, else ``$HPO_STORAGE``, else
``sqlite:///hpo.db`` is resolved here once (:func:`hpo.store.url.resolve_storage`) and every
command hands the resulting :class:`~hpo.store.url.StorageURL` down.
"""
from __future__ import annotations

import functools

import click

from hpo.cli.completion import complete_studies, complete_study_files
from hpo.store.url import check_url, resolve_storage
from trainer import TrainerError

__all__ = [
    "artifacts_option",
    "cpus_option",
    "echo_best",
    "format_option",
    "friendly",
    "max_failures_option",
    "read_study_option",
    "run_options",
    "storage_option",
    "study_option",
]

STORAGE_HELP = "Study storage URL (default: $HPO_STORAGE, else sqlite:///hpo.db)."
ARTIFACTS_HELP = "Artifact folder shared by workers (default: $HPO_ARTIFACTS, else ./artifacts)."


def _resolve_storage(ctx: click.Context, param: click.Parameter, value: str | None):
    """The command's edge: --storage, else $HPO_STORAGE, else the default, checked once."""
    storage = resolve_storage(value)
    try:
        check_url(storage)
    except TrainerError as exc:  # a StorageError: one line, before anything is touched
        raise click.ClickException(str(exc)) from None
    return storage


def friendly(fn):
    """Run a command; our errors (and the trainer's) print as one line, exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except TrainerError as exc:  # HpoError derives from it
            raise click.ClickException(str(exc)) from None

    return wrapper


def storage_option(fn):
    return click.option("--storage", default=None, metavar="URL", help=STORAGE_HELP,
                        callback=_resolve_storage)(fn)


def artifacts_option(fn):
    return click.option("--artifacts", default=None, metavar="DIR", help=ARTIFACTS_HELP,
                        type=click.Path(file_okay=False))(fn)


def study_option(fn):
    return click.option("--study", "study_name", required=True, metavar="NAME",
                        shell_complete=complete_study_files,
                        help="A study name from studies/ or a path to a study YAML file.")(fn)


def max_failures_option(fn):
    return click.option("--max-failures", type=click.IntRange(min=0), default=3,
                        show_default=True,
                        help="Stop when this many trials in a row fail with the same reason "
                             "(0: never).")(fn)


CPUS_HELP = ("Cores the workers started here may use together (default: every core this "
             "process may run on); each worker gets an equal share of threads.")


def cpus_option(fn):
    # No click range: a bad value is our one line (hpo.run.cpu), like every other refusal.
    return click.option("--cpus", type=int, default=None, metavar="N", help=CPUS_HELP)(fn)


def run_options(fn):
    """--gpus, --workers, --cpus and --heartbeat: the commands that start workers."""
    fn = cpus_option(fn)
    fn = click.option("--heartbeat", type=click.IntRange(min=1), default=30,
                      help="Seconds between heartbeats; silent trials are failed and "
                           "retried.")(fn)
    fn = click.option("--workers", type=click.IntRange(min=1), default=1,
                      help="Worker processes when --gpus is not given.")(fn)
    return click.option("--gpus", default=None, metavar="0,1",
                        help="One worker per listed GPU (sets CUDA_VISIBLE_DEVICES for "
                             "each).")(fn)


def format_option(fn):
    return click.option("-f", "--format", "fmt", type=click.Choice(["table", "json"]),
                        default="table", show_default=True, help="Output format.")(fn)


def read_study_option(fn):
    return click.option("--study", "study_name", required=True, metavar="NAME",
                        shell_complete=complete_studies,
                        help="The study's name in the storage (no study file needed).")(fn)


def echo_best(study, fmt: str = "table", *, required: bool = True) -> None:
    """Print the study's best trial; without one (``required``), say why in one line."""
    from hpo.ops.report import best_data, best_table, dumps
    from hpo.run.study import record_of

    data = best_data(study, record_of(study))
    if data is None and not required:
        return
    if data is None:
        raise click.ClickException(_no_best(study))
    click.echo(dumps(data) if fmt == "json" else best_table(data))


def _no_best(study) -> str:
    """Why a study has no best trial: its last failure when trials failed, else none ran yet."""
    from optuna.trial import TrialState

    from hpo.store.storage import with_retries

    name = study.study_name
    trials = with_retries(lambda: study.get_trials(deepcopy=False), what="reading trials")
    failed = [t for t in trials if t.state == TrialState.FAIL]
    if not failed:
        return f"study {name} has no completed trial yet; run: hpo launch --study {name}"
    last = max(failed, key=lambda t: (t.datetime_complete is not None, t.datetime_complete
                                      or 0, t.number))
    reason = " ".join(str(last.user_attrs.get("fail_reason") or "no reason recorded").split())
    finished = sum(1 for t in trials if t.state.is_finished())
    return (f"study {name} has no completed trial: {len(failed)} of {finished} finished "
            f"trial(s) failed, the last (trial {last.number}) with: {reason}; fix that cause "
            "(a data error: the images or the --data folder it names), then queue them again "
            f"with hpo retry --study {name} and run hpo launch; every trial's reason: hpo "
            f"status --study {name}")
