"""One benchmark worker process (``bench/storage.py --worker``): import, wait, run, report.

Two kinds of worker share the start line and the figures:

- ``hpo``: :func:`hpo.run.worker.run_worker` unchanged, with the trainer stand-in.
- ``bare``: a plain Optuna loop (``study.optimize`` with :class:`BareObjective`) on a study
  made by ``optuna.create_study``: the same space, sampler, pruner, epochs and sleeps, and
  nothing of ours: no heartbeat, budget lock, attributes, files or config.

Both write ``stats-<index>.json`` into the sync folder: run and CPU seconds, the stand-in's
own share, the database probe's figures and one overhead figure per trial.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from bench.storage_probe import DatabaseProbe
from bench.storage_standin import BareObjective, StandInFit, bench_spec

__all__ = ["STARTUP_TIMEOUT_S", "worker_process"]

STARTUP_TIMEOUT_S = 900.0


def _wait_for(path: Path, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no start signal at {path} after {timeout:.0f} s")
        time.sleep(0.005)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` atomically (the parent never reads a half-written file)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


class _TrialClock:
    """Per-trial overhead: wall time between trial ends minus the stand-in's own time."""

    def __init__(self, fit) -> None:
        self.fit = fit
        self.overheads: list[float] = []
        self.t = 0.0
        self.own = 0.0

    def start(self) -> None:
        self.t, self.own = time.perf_counter(), self.fit.own_s

    def __call__(self, *_args) -> None:  # an optuna callback or run_worker's on_trial
        now = time.perf_counter()
        self.overheads.append((now - self.t) - (self.fit.own_s - self.own))
        self.t, self.own = now, self.fit.own_s


def _run_hpo(args: argparse.Namespace, spec, clock: _TrialClock) -> int:
    from hpo.run.budget import Budget
    from hpo.run.worker import run_worker

    return run_worker(spec, storage=args.storage, artifacts=args.artifacts,
                      budget=Budget(args.trials, None), fit=clock.fit, on_trial=clock)


def _run_bare(args: argparse.Namespace, spec, clock: _TrialClock) -> int:
    import optuna

    from hpo.studyfile.samplers import create_pruner, create_sampler

    study = optuna.load_study(study_name=args.study, storage=args.storage,
                              sampler=create_sampler(spec.sampler),
                              pruner=create_pruner(spec.pruner))
    study.optimize(clock.fit, n_trials=args.trials, callbacks=[clock])
    return args.trials


def worker_process(args: argparse.Namespace) -> int:
    """``--worker`` mode: import, signal ready, wait for the start line, run, report.

    Args:
        args: the parsed command line of ``bench/storage.py`` (``--bare`` picks the kind).

    Returns:
        0 (errors propagate; the parent reads the exit status and the log).
    """
    began = time.perf_counter()
    # What the real worker imports, plus what its first trial would import (library_versions
    # reads timm's and albumentations' versions): one-time costs, kept out of the timing.
    import albumentations  # noqa: F401
    import optuna
    import timm  # noqa: F401

    import hpo.run.worker  # noqa: F401

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # Optuna's warnings (a failed trial and its exception) go to the log the parent scans for
    # lock errors; its per-trial INFO lines would only fill it.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    hpo.run.worker.install_stop_signals()
    spec = bench_spec(args.study, trials=args.trials, epochs=args.epochs, sampler=args.sampler)
    sleep_s = args.sleep_ms / 1000.0
    fit = BareObjective(spec, sleep_s, args.epochs) if args.bare else StandInFit(sleep_s)
    clock = _TrialClock(fit)
    probe = DatabaseProbe()
    probe.install()
    sync = Path(args.sync_dir)
    import_s = time.perf_counter() - began
    write_json(sync / f"ready-{args.index}.json", {"import_s": import_s})
    _wait_for(sync / "go", timeout=STARTUP_TIMEOUT_S)
    start_wall, start, cpu = time.time(), time.perf_counter(), time.process_time()
    clock.start()
    ran = (_run_bare if args.bare else _run_hpo)(args, spec, clock)
    end_wall, run_s = time.time(), time.perf_counter() - start
    write_json(sync / f"stats-{args.index}.json", {
        "ran": ran, "import_s": import_s, "start": start_wall, "end": end_wall,
        "run_s": run_s, "cpu_s": time.process_time() - cpu, "standin_s": fit.own_s,
        "standin_cpu_s": fit.own_cpu_s, "overheads_s": clock.overheads, **probe.snapshot(),
    })
    return 0
