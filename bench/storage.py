"""Storage load: many worker processes share one study, each running the real trial code path.

    python bench/storage.py --storage sqlite:///load.db --workers 8 --trials 500
    python bench/storage.py --storage postgresql://postgres@127.0.0.1:5432/test --workers 16 \\
        --trials 500

starts ``--workers`` worker processes (subprocesses of this script, as ``hpo launch`` starts
``hpo worker``) on one fresh study. Each runs :func:`hpo.worker.run_worker` unchanged (budget
counting, retries, the real :class:`hpo.objective.Objective`: suggestions, config building,
per-epoch report and pruning, user attributes, artifact upload) with ``fit=`` a stand-in for
``trainer.fit`` that sleeps ``--sleep-ms`` per epoch instead of training, and writes the files a
real run writes. Every worker gets the study's whole budget (``--trials``), so they stop together.

The workers import everything first and wait at a start line, so the timing leaves out
interpreter start-up (reported on its own). Printed: trials by state (only COMPLETE and PRUNED is
a pass), wall seconds from the start line to the last worker's end, trials/s, the per-trial
overhead and the number of lock / connection errors in the workers' logs, and last::

    RESULT storage=sqlite workers=8 trials=500 failed=0 running=0 lock_errors=0 \\
        trials_per_s=... overhead_ms_per_trial=...

``overhead_ms_per_trial`` is the time the workers spent in ``run_worker`` that was not the
stand-in's own work (its sleeps and file writes), summed over workers, divided by the trials in
the study: budget counting, sampling, pruning, every storage read and write, the artifact upload
and the confusion PNG; with more workers than cores it also holds the wait for a core.
``--sequential-baseline`` also runs one worker on a second fresh study in the same storage and
prints the throughput ratio. The exit status is 1 when a trial failed or stayed RUNNING, a lock
error was logged, or a worker exited with an error.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# Lock waits that ran out (SQLite), deadlocks / serialisation failures (PostgreSQL), and the
# storage layer's retry warnings: any of them in a worker's log counts as a lock error.
LOCK_PATTERN = re.compile(
    r"database is locked|database table is locked|deadlock detected|could not serialize"
    r"|lock timeout|OperationalError|database unavailable while", re.IGNORECASE)
_VAL_ROWS = 54  # 3 validation images per class
_STARTUP_TIMEOUT_S = 900.0


# ---------------------------------------------------------------------------------------------
# The study and the trainer stand-in (run inside the workers)


def bench_spec(name: str, *, trials: int, epochs: int = 3, sampler: str = "tpe"):
    """The benchmark's study: a small space, TPE (or random), the median pruner.

    Built in code with :func:`hpo.spec.parse_study_spec`, so it is validated like a study file.
    ``data.train_dir`` names no real folder: the stand-in never reads it.

    Args:
        name: the study name (fresh per run).
        trials: the study's ``n_trials``.
        epochs: epochs per trial (one report and one pruning decision each).
        sampler: ``tpe`` or ``random``.

    Returns:
        The validated :class:`hpo.spec.StudySpec`.
    """
    from hpo.spec import parse_study_spec

    raw = {
        "description": "storage load benchmark (trainer stand-in)",
        "metric": "f1",
        "direction": "maximize",
        "n_trials": trials,
        "sampler": {"name": sampler},
        "pruner": {"name": "median", "n_startup_trials": 5, "n_warmup_steps": 1},
        "data": {"train_dir": "bench-storage-no-data"},
        "fixed": {
            "epochs": epochs,
            "device": "cpu",
            "data": {"img_size": [32, 32]},
            "model": {"name": "test_resnet", "pretrained": False},
        },
        "space": {
            "optim.name": {"type": "categorical", "choices": ["adamw", "adam", "sgd"]},
            "optim.lr": {"type": "float", "low": 1.0e-5, "high": 1.0e-1, "log": True},
            "optim.weight_decay": {"type": "float", "low": 1.0e-6, "high": 1.0e-1, "log": True},
            "model.drop_rate": {"type": "float", "low": 0.0, "high": 0.5},
            "batch_size": {"type": "categorical", "choices": [16, 32, 64]},
        },
    }
    return parse_study_spec(raw, name=name, path="<bench/storage.py>")


def _quality(cfg) -> float:
    """A smooth, deterministic score in (0, 1) of the searched settings (best near lr 3e-3)."""
    lr_term = math.exp(-0.5 * ((math.log10(cfg.optim.lr) + 2.5) / 0.8) ** 2)
    wd_term = 1.0 - 0.1 * min(abs(math.log10(cfg.optim.weight_decay) + 3.5) / 2.5, 1.0)
    drop_term = 1.0 - 0.3 * abs(cfg.model.drop_rate - 0.2)
    optim_term = {"adamw": 1.0, "adam": 0.95}.get(cfg.optim.name, 0.85)
    batch_term = {16: 0.97, 32: 1.0}.get(cfg.batch_size, 0.98)
    return lr_term * wd_term * drop_term * optim_term * batch_term


def _epoch_metrics(quality: float, epoch: int, lr: float) -> dict[str, float]:
    f1 = 0.1 + 0.85 * quality * (1.0 - 0.5 ** epoch)
    return {
        "epoch": epoch, "f1": f1, "accuracy": min(1.0, f1 + 0.05),
        "mask_f1": min(1.0, 1.15 * f1), "gender_f1": min(1.0, 1.1 * f1 + 0.05),
        "age_f1": 0.85 * f1, "val_loss": 2.6 * (1.0 - f1) + 0.1,
        "train_loss": 2.4 * (1.0 - f1) + 0.05, "lr": lr, "images_per_second": 1000.0,
    }


def _val_probs(f1: float, labels, *, seed: int):
    """(N, 18) float32 probabilities, rows summing to 1, right more often as f1 grows."""
    import numpy as np

    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(len(labels), 18))
    logits[np.arange(len(labels)), labels] += 6.0 * f1
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    return probs.astype(np.float32)


class StandInFit:
    """``trainer.fit``'s signature without the training: sleeps per epoch, writes small files.

    Per epoch it sleeps ``sleep_s``, computes metrics from the config's searched settings (so
    the sampler has something to optimise), writes ``last.pt`` (and ``best.pt`` and
    ``val_probs.npy`` when f1 improves) and calls ``on_epoch``. ``config.yaml`` is written at
    the start, like the trainer does. ``own_s`` accumulates the time spent here outside
    ``on_epoch`` (the Objective's storage writes and pruning happen inside ``on_epoch``).
    """

    def __init__(self, sleep_s: float) -> None:
        self.sleep_s = sleep_s
        self.own_s = 0.0
        self.own_cpu_s = 0.0
        self.calls = 0

    def __call__(self, cfg, *, on_epoch=None, resume=None, data=None):
        """Run the stand-in "training" for ``cfg.epochs`` epochs; returns a FitResult."""
        import numpy as np
        import torch

        from trainer.config import config_to_dict, save_config
        from trainer.engine import FitResult, load_checkpoint

        self.calls += 1
        started, cpu_started = time.perf_counter(), time.process_time()
        in_callback = cpu_in_callback = 0.0
        try:
            out = Path(cfg.output_dir)
            out.mkdir(parents=True, exist_ok=True)
            save_config(cfg, out / "config.yaml")
            quality = _quality(cfg)
            labels = np.arange(_VAL_ROWS) % 18
            history: list[dict[str, float]] = []
            first = 1
            if resume is not None:  # a retried trial continues where the dead one stopped
                ckpt = load_checkpoint(resume)
                history, first = list(ckpt["history"]), int(ckpt["epoch"]) + 1
            best = max(history, key=lambda h: h["f1"]) if history else None
            best_probs = None if best is None else _val_probs(
                best["f1"], labels, seed=int(best["epoch"]))
            small = {"model": {}, "config": config_to_dict(cfg)}
            for epoch in range(first, cfg.epochs + 1):
                time.sleep(self.sleep_s)
                metrics = _epoch_metrics(quality, epoch, cfg.optim.lr)
                history.append(metrics)
                if best is None or metrics["f1"] > best["f1"]:
                    best = metrics
                    best_probs = _val_probs(metrics["f1"], labels, seed=epoch)
                    torch.save({**small, "epoch": epoch}, out / "best.pt")
                    np.save(out / "val_probs.npy", best_probs)
                torch.save({**small, "epoch": epoch, "history": history}, out / "last.pt")
                if on_epoch is not None:
                    t, c = time.perf_counter(), time.process_time()
                    try:
                        stop = on_epoch(epoch, dict(metrics))
                    finally:
                        in_callback += time.perf_counter() - t
                        cpu_in_callback += time.process_time() - c
                    if stop:
                        break
            if best is None or best_probs is None:
                raise RuntimeError(f"stand-in: nothing to do, {cfg.epochs} epochs already done")
            return FitResult(
                history=history, best_epoch=int(best["epoch"]), best_metrics=best,
                val_probs=best_probs, val_labels=labels,
                val_paths=[f"standin/{i:03d}_{y}/normal.jpg" for i, y in enumerate(labels)],
                output_dir=out, best_checkpoint=out / "best.pt", last_checkpoint=out / "last.pt",
                seconds=time.perf_counter() - started, images_per_second=1000.0,
                device="cpu (storage bench stand-in)",
            )
        finally:
            self.own_s += time.perf_counter() - started - in_callback
            self.own_cpu_s += time.process_time() - cpu_started - cpu_in_callback


class _DatabaseTimer:
    """Time spent in SQL statements and commits in this process (all SQLAlchemy engines)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.statements = 0
        self.commits = 0

    def install(self) -> None:
        from sqlalchemy import event
        from sqlalchemy.engine import Engine
        from sqlalchemy.engine.default import DefaultDialect

        def before(conn, cursor, statement, parameters, context, executemany):
            conn.info.setdefault("_bench_t", []).append(time.perf_counter())

        def after(conn, cursor, statement, parameters, context, executemany):
            self.seconds += time.perf_counter() - conn.info["_bench_t"].pop()
            self.statements += 1

        event.listen(Engine, "before_cursor_execute", before)
        event.listen(Engine, "after_cursor_execute", after)
        # SQLAlchemy has no event after a commit; the commit is where SQLite syncs its WAL and
        # PostgreSQL its log, so wrap the dialect's commit (timing only, same behaviour).
        commit = DefaultDialect.do_commit

        def timed_commit(dialect, dbapi_connection):
            t = time.perf_counter()
            try:
                return commit(dialect, dbapi_connection)
            finally:
                self.seconds += time.perf_counter() - t
                self.commits += 1

        DefaultDialect.do_commit = timed_commit


def _wait_for(path: Path, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no start signal at {path} after {timeout:.0f} s")
        time.sleep(0.005)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)  # the parent never reads a half-written file


def worker_process(args: argparse.Namespace) -> int:
    """``--worker`` mode: import, signal ready, wait for the start line, run_worker, report."""
    import logging

    began = time.perf_counter()
    # What the real worker imports, plus what its first trial would import (library_versions
    # reads timm's and albumentations' versions): one-time costs, kept out of the timing.
    import albumentations  # noqa: F401
    import optuna
    import timm  # noqa: F401

    from hpo.worker import Budget, install_stop_signals, run_worker

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # Optuna's warnings (a failed trial and its exception) go to the log the parent scans for
    # lock errors; its per-trial INFO lines would only fill it.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    install_stop_signals()
    spec = bench_spec(args.study, trials=args.trials, epochs=args.epochs, sampler=args.sampler)
    fit = StandInFit(args.sleep_ms / 1000.0)
    timer = _DatabaseTimer()
    timer.install()
    overheads: list[float] = []
    mark = {"t": 0.0, "own": 0.0}

    def on_trial(frozen) -> None:
        now = time.perf_counter()
        overheads.append((now - mark["t"]) - (fit.own_s - mark["own"]))
        mark["t"], mark["own"] = now, fit.own_s

    sync = Path(args.sync_dir)
    import_s = time.perf_counter() - began
    _write_json(sync / f"ready-{args.index}.json", {"import_s": import_s})
    _wait_for(sync / "go", timeout=_STARTUP_TIMEOUT_S)
    start_wall, start, cpu = time.time(), time.perf_counter(), time.process_time()
    mark["t"] = start
    ran = run_worker(spec, storage=args.storage, artifacts=args.artifacts,
                     budget=Budget(args.trials, None), fit=fit, on_trial=on_trial)
    end_wall, run_s = time.time(), time.perf_counter() - start
    _write_json(sync / f"stats-{args.index}.json", {
        "ran": ran, "import_s": import_s, "start": start_wall, "end": end_wall,
        "run_s": run_s, "cpu_s": time.process_time() - cpu, "standin_s": fit.own_s,
        "standin_cpu_s": fit.own_cpu_s, "db_s": timer.seconds, "statements": timer.statements,
        "commits": timer.commits, "overheads_s": overheads,
    })
    return 0


# ---------------------------------------------------------------------------------------------
# The driver


@dataclass
class LoadResult:
    """What one load run measured (see the module docstring for the definitions)."""

    storage: str
    study: str
    workers: int
    budget: int
    states: dict[str, int]
    lock_errors: int
    lock_lines: list[str]
    exit_codes: list[int]
    startup_s: float
    import_s: list[float]
    wall_s: float
    trials_per_s: float
    overhead_ms: float
    overhead_p50_ms: float
    overhead_p95_ms: float
    standin_ms: float
    cpu_ms: float
    db_ms: float
    statements: float
    commits: float
    load_avg: tuple[float, float] = (0.0, 0.0)
    missing_stats: list[int] = field(default_factory=list)
    stderr_tails: dict[int, str] = field(default_factory=dict)

    @property
    def trials(self) -> int:
        """All trials in the study, whatever their state."""
        return sum(self.states.values())

    @property
    def finished(self) -> int:
        """COMPLETE + PRUNED trials."""
        return self.states.get("COMPLETE", 0) + self.states.get("PRUNED", 0)

    @property
    def ok(self) -> bool:
        """No failed or running trial, no lock error, every worker exited 0."""
        return (self.states.get("FAIL", 0) == 0 and self.states.get("RUNNING", 0) == 0
                and self.lock_errors == 0 and not any(self.exit_codes))

    def result_line(self) -> str:
        """The ``RESULT ...`` line."""
        return (f"RESULT storage={self.storage} workers={self.workers} trials={self.trials} "
                f"failed={self.states.get('FAIL', 0)} running={self.states.get('RUNNING', 0)} "
                f"lock_errors={self.lock_errors} trials_per_s={self.trials_per_s:.2f} "
                f"overhead_ms_per_trial={self.overhead_ms:.1f}")

    def report(self) -> list[str]:
        """Human-readable lines describing the run (everything but the RESULT line)."""
        states = " ".join(f"{k}={v}" for k, v in sorted(self.states.items()))
        over = self.finished - self.budget
        lines = [
            f"study {self.study}: {self.workers} workers ready in {self.startup_s:.1f} s "
            f"(imports: median {statistics.median(self.import_s):.1f} s per process)",
            f"trials by state: {states} (budget {self.budget}, finished {self.finished}"
            + (f", {over:+d} vs budget)" if over else ")"),
            f"wall {self.wall_s:.2f} s from the start line to the last worker's end; "
            f"trials/s {self.trials_per_s:.2f}",
            f"per trial: overhead {self.overhead_ms:.1f} ms (p50 {self.overhead_p50_ms:.1f}, "
            f"p95 {self.overhead_p95_ms:.1f}), of which in the database "
            f"{self.db_ms:.1f} ms ({self.statements:.0f} statements, {self.commits:.0f} "
            f"commits); stand-in {self.standin_ms:.1f} ms; worker CPU {self.cpu_ms:.1f} ms",
            f"worker exit codes: {'all 0' if not any(self.exit_codes) else self.exit_codes}; "
            f"lock_errors={self.lock_errors}; 1-min load average {self.load_avg[0]:.1f} at "
            f"the start line, {self.load_avg[1]:.1f} at the end ({os.cpu_count()} CPUs)",
        ]
        if self.missing_stats:
            lines.append(f"  no timings from workers {self.missing_stats} (they did not finish "
                         "run_worker): the per-trial figures leave them out")
        lines += [f"  lock error: {line}" for line in self.lock_lines[:5]]
        for index, tail in self.stderr_tails.items():
            lines.append(f"  worker {index} stderr (tail):")
            lines += [f"    {line}" for line in tail.splitlines()]
        return lines


def _kind(url: str) -> str:
    from sqlalchemy.engine import make_url

    backend = make_url(url).get_backend_name()
    return "postgresql" if backend.startswith("postgres") else backend


def _spawn(index: int, *, url: str, study: str, trials: int, epochs: int, sleep_ms: float,
           sampler: str, artifacts: Path, sync: Path) -> tuple[subprocess.Popen, Path]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--worker", "--storage", url,
            "--study", study, "--trials", str(trials), "--epochs", str(epochs),
            "--sleep-ms", str(sleep_ms), "--sampler", sampler, "--artifacts", str(artifacts),
            "--sync-dir", str(sync), "--index", str(index)]
    err_path = sync / f"worker-{index}.err"
    with open(err_path, "wb") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, cwd=REPO)
    return proc, err_path


def _stop_all(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()  # SIGTERM: the worker records its running trial FAIL and exits
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def run_load(
    storage: str,
    *,
    workers: int,
    trials: int,
    sleep_ms: float = 5.0,
    epochs: int = 3,
    sampler: str = "tpe",
    artifacts: str | os.PathLike[str] | None = None,
    timeout: float = 1800.0,
    log: Callable[[str], None] | None = None,
) -> LoadResult:
    """Run ``workers`` worker processes on one fresh study until ``trials`` trials are done.

    Args:
        storage: the study storage URL (SQLite file or PostgreSQL).
        workers: worker processes.
        trials: the study's budget (every worker is given all of it).
        sleep_ms: the stand-in's sleep per epoch.
        epochs: epochs per trial.
        sampler: ``tpe`` or ``random``.
        artifacts: the artifact folder; a temporary one (deleted afterwards) when None.
        timeout: seconds after the start line before the workers are stopped.
        log: progress messages (e.g. ``print``); silent when None.

    Returns:
        The measurements; ``result.ok`` is False when a trial failed or stayed RUNNING, a lock
        error was logged or a worker exited with an error.

    Raises:
        RuntimeError: a worker died before the start line or the run passed ``timeout``.
    """
    from optuna.trial import TrialState

    from hpo.storage import mask_url, resolve_storage_url
    from hpo.worker import open_study

    say = log or (lambda message: None)
    url = resolve_storage_url(storage)
    study_name = f"bench-storage-{uuid.uuid4().hex[:8]}"
    spec = bench_spec(study_name, trials=trials, epochs=epochs, sampler=sampler)
    # The parent creates the study before starting workers, as ``hpo launch`` does.
    study = open_study(spec, storage=url)
    say(f"storage {mask_url(url)}, study {study_name}: {workers} workers, budget {trials} "
        f"trials, {epochs} epochs x {sleep_ms:g} ms, sampler {sampler}")
    sync = Path(tempfile.mkdtemp(prefix="bench-storage-"))
    art = Path(artifacts) if artifacts is not None else Path(
        tempfile.mkdtemp(prefix="bench-storage-artifacts-"))
    procs: list[subprocess.Popen] = []
    errs: list[Path] = []
    try:
        spawned = time.perf_counter()
        for i in range(workers):
            proc, err = _spawn(i, url=url, study=study_name, trials=trials, epochs=epochs,
                               sleep_ms=sleep_ms, sampler=sampler, artifacts=art, sync=sync)
            procs.append(proc)
            errs.append(err)
        ready = [sync / f"ready-{i}.json" for i in range(workers)]
        while not all(p.exists() for p in ready):
            dead = [i for i, p in enumerate(procs) if p.poll() is not None]
            if dead or time.perf_counter() - spawned > _STARTUP_TIMEOUT_S:
                raise RuntimeError(f"worker(s) {dead or 'all'} did not start: "
                                   + errs[dead[0] if dead else 0].read_text()[-2000:])
            time.sleep(0.05)
        startup_s = time.perf_counter() - spawned
        import_s = [json.loads(p.read_text())["import_s"] for p in ready]
        say(f"{workers} workers ready after {startup_s:.1f} s; go")
        load_go = os.getloadavg()[0]
        go = time.time()
        (sync / "go").touch()
        deadline = time.monotonic() + timeout
        for p in procs:
            left = deadline - time.monotonic()
            try:
                p.wait(timeout=max(left, 0.1))
            except subprocess.TimeoutExpired:
                raise RuntimeError(f"the workers did not finish within {timeout:.0f} s "
                                   f"(budget {trials} trials)") from None
        load_end = os.getloadavg()[0]
        codes = [p.returncode for p in procs]
        stats_files = [sync / f"stats-{i}.json" for i in range(workers)]
        stats = [json.loads(p.read_text()) for p in stats_files if p.exists()]
        missing = [i for i, p in enumerate(stats_files) if not p.exists()]
        lock_lines, tails = [], {}
        for i, err in enumerate(errs):
            text = err.read_text(errors="replace")
            lock_lines += [line for line in text.splitlines() if LOCK_PATTERN.search(line)]
            if codes[i]:
                tails[i] = "\n".join(text.splitlines()[-15:])
    finally:
        _stop_all(procs)
        shutil.rmtree(sync, ignore_errors=True)
        if artifacts is None:
            shutil.rmtree(art, ignore_errors=True)

    frozen = study.get_trials(deepcopy=False)
    states = {s.name: 0 for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL,
                                  TrialState.RUNNING)}
    for t in frozen:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    n = max(len(frozen), 1)
    wall = max((s["end"] for s in stats), default=go) - go
    per_trial = sorted(x for s in stats for x in s["overheads_s"])

    def total(key: str) -> float:
        return sum(s[key] for s in stats)

    return LoadResult(
        storage=_kind(url), study=study_name, workers=workers, budget=trials, states=states,
        lock_errors=len(lock_lines), lock_lines=lock_lines, exit_codes=codes,
        startup_s=startup_s, import_s=import_s, wall_s=wall,
        trials_per_s=len(frozen) / wall if wall > 0 else 0.0,
        overhead_ms=1000 * (total("run_s") - total("standin_s")) / n,
        overhead_p50_ms=1000 * _quantile(per_trial, 0.5),
        overhead_p95_ms=1000 * _quantile(per_trial, 0.95),
        standin_ms=1000 * total("standin_s") / n,
        cpu_ms=1000 * (total("cpu_s") - total("standin_cpu_s")) / n,
        db_ms=1000 * total("db_s") / n, statements=total("statements") / n,
        commits=total("commits") / n, load_avg=(load_go, load_end), missing_stats=missing,
        stderr_tails=tails,
    )


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    return values[min(len(values) - 1, int(q * len(values)))]


def main(argv: list[str] | None = None) -> int:
    """Command line: the benchmark (default) or one worker (``--worker``, internal)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--storage", required=True,
                        help="sqlite:///FILE or postgresql://USER@HOST:PORT/DB")
    parser.add_argument("--workers", type=int, default=8, help="worker processes (default 8)")
    parser.add_argument("--trials", type=int, default=500,
                        help="the study's trial budget, shared by all workers (default 500)")
    parser.add_argument("--sleep-ms", type=float, default=5.0,
                        help="the stand-in's sleep per epoch (default 5)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per trial (default 3)")
    parser.add_argument("--sampler", choices=("tpe", "random"), default="tpe")
    parser.add_argument("--artifacts", default=None,
                        help="artifact folder to keep (default: a temporary one, deleted)")
    parser.add_argument("--sequential-baseline", action="store_true",
                        help="also run 1 worker on a second study and print the ratio")
    parser.add_argument("--timeout", type=float, default=1800.0,
                        help="stop the workers after this many seconds (default 1800)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--study", help=argparse.SUPPRESS)
    parser.add_argument("--sync-dir", help=argparse.SUPPRESS)
    parser.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.workers < 1 or args.trials < 1 or args.epochs < 1 or args.sleep_ms < 0:
        parser.error("--workers, --trials and --epochs must be >= 1 and --sleep-ms >= 0")
    if args.worker:
        return worker_process(args)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "A new study created" lines

    def run(workers: int) -> LoadResult:
        result = run_load(args.storage, workers=workers, trials=args.trials,
                          sleep_ms=args.sleep_ms, epochs=args.epochs, sampler=args.sampler,
                          artifacts=args.artifacts, timeout=args.timeout,
                          log=lambda m: print(m, flush=True))
        for line in result.report():
            print(line, flush=True)
        return result

    baseline = None
    if args.sequential_baseline:
        baseline = run(1)
        print("BASELINE" + baseline.result_line().removeprefix("RESULT"), flush=True)
    result = run(args.workers)
    if baseline is not None:
        ratio = result.trials_per_s / baseline.trials_per_s if baseline.trials_per_s else 0.0
        print(f"RATIO trials_per_s workers={args.workers} / workers=1: {ratio:.2f}x "
              f"({result.trials_per_s:.2f} / {baseline.trials_per_s:.2f})", flush=True)
    print(result.result_line(), flush=True)
    return 0 if result.ok and (baseline is None or baseline.ok) else 1


if __name__ == "__main__":
    sys.exit(main())
