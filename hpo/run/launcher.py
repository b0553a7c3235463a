"""``hpo launch``: create or resume a study, start its worker processes, watch them.

One worker per GPU (``--gpus 0,1``: each sees one device through ``CUDA_VISIBLE_DEVICES``) or N
workers on the CPU. Workers get the storage URL in their environment, never in argv (``ps``
shows argv to every user of the machine). A terminal's Ctrl-C reaches only the launcher, which
forwards one SIGTERM to each worker; each records its running trial FAIL and queues its resume.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import optuna
import torch
from optuna.trial import TrialState

from hpo.errors import HpoError
from hpo.run.cpu import cpu_share, worker_env
from hpo.run.diskcheck import check_artifacts_writable, check_room
from hpo.run.lineage import queue_retry
from hpo.run.preflight import check_models
from hpo.run.progress import Counts, watch
from hpo.run.study import create_or_resume, data_folder, spec_for
from hpo.run.worker import STREAK_EXIT, check_data
from hpo.store.optuna_private import trial_id
from hpo.store.storage import storage_of, with_retries
from hpo.store.url import StorageURL, as_storage
from hpo.studyfile.spec import StudySpec

__all__ = ["Launch", "budget_met", "devices_of", "fail_left_running", "prepare_launch",
           "run_workers"]

log = logging.getLogger("hpo")


@dataclass(frozen=True)
class Launch:
    """What a launch runs: the study file, where, on which data, with which budget."""

    spec: StudySpec
    storage: StorageURL
    train_dir: str | None
    study: optuna.Study
    target: int | None
    heartbeat: int
    max_failures: int = 3
    n_trials: int | None = None
    timeout: float | None = None
    artifacts: str | None = None

    def resume_hint(self) -> str:
        """The command that resumes this launch (storage shown with its password masked)."""
        hint = f"hpo launch --study {self.spec.name}"
        if self.train_dir:
            hint += f" --data {self.train_dir}"
        if self.storage.explicit:
            hint += f" --storage {self.storage.masked}"
        if self.artifacts:
            hint += f" --artifacts {self.artifacts}"
        return hint


def prepare_launch(study_name: str, *, storage: StorageURL | str, train_dir: str | None,
                   n_trials: int | None, timeout: float | None, heartbeat: int,
                   artifacts: str | None, max_failures: int = 3,
                   spec: StudySpec | None = None) -> Launch:
    """Check everything, then create or resume the study (nothing is created on a bad input).

    Checked first: the study file, the data folder, every model the study can sample (its
    weights resolve on this machine, it builds at the study's image size and head), and the
    artifact folder (writable, with room for a trial).
    An existing study launched without ``--data`` trains on the folder it recorded.

    Raises:
        SpecError, DataError, StorageError, HpoError: one line each.
    """
    storage = as_storage(storage)
    spec = spec or spec_for(study_name, storage=storage)  # given: a study hpo refit writes
    train_dir = data_folder(spec.name, train_dir, storage=storage)
    check_data(spec, train_dir)
    for line in check_models(spec, train_dir=train_dir):
        log.info("pre-flight: %s", line)
    check_artifacts_writable(artifacts)
    check_room(artifacts)
    study = create_or_resume(spec, storage=storage, train_dir=train_dir,
                             heartbeat_interval=heartbeat)
    return Launch(spec=spec, storage=storage, train_dir=train_dir, study=study,
                  target=n_trials or spec.n_trials, heartbeat=heartbeat,
                  max_failures=max_failures, n_trials=n_trials, timeout=timeout,
                  artifacts=artifacts)


def budget_met(launch: Launch) -> str | None:
    """A line saying the budget is already met (nothing to run), or None when there is work.

    Work is left when fewer lineages than the target exist, or trials wait (retries, enqueued).
    """
    if not launch.target:
        return None
    trials = with_retries(lambda: launch.study.get_trials(deepcopy=False),
                          what="counting trials")
    counts = Counts(trials)
    lineages = sum(1 for t in trials if "failed_trial" not in t.system_attrs)
    if lineages < launch.target or counts.waiting or counts.running:
        return None
    return (f"budget met: {counts.finished}/{launch.target} trials finished (complete "
            f"{counts.complete}, pruned {counts.pruned}, failed {counts.failed}); nothing to "
            f"run. Raise it with --n-trials {launch.target + 10} to search on")


def _worker_argv(launch: Launch) -> list[str]:
    path = Path(launch.spec.path)
    # A spec rebuilt from the text the study recorded has no file here: the worker rebuilds it
    # the same way from the study's name.
    study_arg = str(path) if path.is_file() else launch.spec.name
    verbose = ["-v"] if log.isEnabledFor(logging.INFO) else []  # hpo -v launch: -v workers
    argv = [sys.executable, "-m", "hpo.cli", *verbose, "worker", "--study", study_arg,
            "--heartbeat", str(launch.heartbeat), "--max-failures", str(launch.max_failures)]
    for flag, value in (("--data", launch.train_dir), ("--n-trials", launch.n_trials),
                        ("--timeout", launch.timeout), ("--artifacts", launch.artifacts)):
        if value is not None:
            argv += [flag, str(value)]
    return argv


def run_workers(launch: Launch, *, devices: list[str | None],
                share: int | None = None) -> tuple[list[int], bool]:
    """Start one worker per device (None: CPU), each with ``share`` threads (:mod:`hpo.run.cpu`;
    default: the machine's cores divided among them), show progress until all exit.

    Returns:
        The workers' exit codes, and whether the launch was stopped (Ctrl-C or SIGTERM).
    """
    argv = _worker_argv(launch)
    share = cpu_share(len(devices)) if share is None else share
    procs = []
    for index, device in enumerate(devices):
        # HPO_LAUNCHED: the launcher ran the pre-flight (workers skip it) and reports a
        # failure streak once for all of them.
        env = {**os.environ, "HPO_WORKER_INDEX": str(index), "HPO_STORAGE": launch.storage.url,
               "HPO_LAUNCHED": "1", **worker_env(share)}
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
        watch(launch.study, procs, metric=launch.spec.metric, target=launch.target)
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)
    codes = [p.wait() for p in procs]
    for line in fail_left_running(launch.study, procs, codes):
        print(line, file=sys.stderr, flush=True)
    return codes, stopped


def fail_left_running(study: optuna.Study, procs, codes: list[int]) -> list[str]:
    """Record FAIL (and queue a resume of) the trials our exited workers left RUNNING.

    A worker that crashed cannot record its own trial; its heartbeat would turn it stale only
    when another worker looks. Trials name their worker (``host:pid``), so only ours are touched.

    Returns:
        One line per worker that exited with an error: its number, process id, exit code and
        the trials it left.
    """
    host = socket.gethostname()
    ours = {f"{host}:{getattr(p, 'pid', None)}": i for i, p in enumerate(procs)}
    left: dict[int, list[int]] = {}
    try:
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        for t in running:
            index = ours.get(str(t.user_attrs.get("worker")))
            if index is None:
                continue
            reason = (f"its worker {index} (pid {getattr(procs[index], 'pid', '?')}) exited "
                      f"with code {codes[index]}; retried from its last checkpoint")
            storage_of(study).set_trial_user_attr(trial_id(t), "fail_reason", reason)
            study.tell(t.number, state=TrialState.FAIL)
            queue_retry(study, study.trials[t.number])
            left.setdefault(index, []).append(t.number)
    except Exception as exc:  # the summary must come out even when the database is away
        log.warning("could not fail the trials left running: %s", exc)
    lines = []
    for i, code in enumerate(codes):
        if code not in (0, 130, STREAK_EXIT):  # stopped by a signal or a streak: said apart
            trials = left.get(i)
            extra = f"; its trial(s) {', '.join(map(str, trials))} recorded FAIL and queued " \
                "to resume" if trials else ""
            lines.append(f"worker {i} (pid {getattr(procs[i], 'pid', '?')}) exited with code "
                         f"{code}{extra}")
    return lines


def devices_of(gpus: str | None, workers: int) -> list[str | None]:
    """``--gpus 0,1`` -> ["0", "1"]; no --gpus -> ``workers`` CPU workers.

    Checked before anything starts: a worker given a device it cannot see would train on the
    CPU without a word (CUDA_VISIBLE_DEVICES naming no device hides every GPU).

    Raises:
        HpoError: ``--gpus`` names no device, a device that is not a number, or a GPU this
            machine does not have (none at all when CUDA is not available).
    """
    if gpus is None:
        return [None] * workers
    devices = [g.strip() for g in gpus.split(",") if g.strip()]
    if not devices:
        raise HpoError(f"--gpus {gpus!r} names no GPU; give device numbers like --gpus 0,1")
    bad = [d for d in devices if not (d.isascii() and d.isdigit())]
    if bad:
        raise HpoError(f"--gpus {gpus!r}: {bad[0]!r} is not a GPU number (--gpus takes device "
                       "numbers 0, 1, ... separated by commas, as nvidia-smi lists them); "
                       "give e.g. --gpus 0,1, or leave --gpus out to train on the CPU")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    # --gpus numbers every GPU of the machine (each worker's CUDA_VISIBLE_DEVICES replaces
    # ours), while torch counts only those CUDA_VISIBLE_DEVICES shows us: then no range check.
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
    missing = [d for d in devices if int(d) >= count and (not hidden or not count)]
    if missing and not count:
        note = f"; CUDA_VISIBLE_DEVICES is {hidden!r} here" if hidden is not None else ""
        raise HpoError(f"--gpus {gpus!r}: this machine has no GPU that torch can use "
                       f"(torch.cuda.is_available() is False{note}), so the workers would "
                       "train on the CPU; leave --gpus out (--workers N for N CPU workers), or "
                       "install a CUDA build of torch and its driver")
    if missing:
        raise HpoError(f"--gpus {gpus!r}: GPU {missing[0]} does not exist (this machine has "
                       f"{count}: 0..{count - 1}); give numbers below {count}")
    return devices
