"""The storage benchmark's driver: start worker processes on a fresh study, wait, measure.

:func:`run_load` creates the study (as ``hpo launch`` does, or with ``optuna.create_study`` for
the bare baseline), starts the workers (``bench/storage.py --worker``), lets them go together
and returns a :class:`LoadResult`.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from bench.storage_standin import bench_spec
from bench.storage_worker import STARTUP_TIMEOUT_S

__all__ = ["LOCK_PATTERN", "LoadResult", "run_load"]

SCRIPT = Path(__file__).resolve().with_name("storage.py")
REPO = SCRIPT.parents[1]
# Lock waits that ran out (SQLite), deadlocks / serialisation failures (PostgreSQL), and the
# storage layer's retry warnings: any of them in a worker's log counts as a lock error.
LOCK_PATTERN = re.compile(
    r"database is locked|database table is locked|deadlock detected|could not serialize"
    r"|lock timeout|OperationalError|database unavailable while", re.IGNORECASE)
Kind = Literal["hpo", "bare"]


@dataclass
class LoadResult:
    """What one load run measured (see ``bench/storage.py``'s docstring for the definitions)."""

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
    kind: Kind = "hpo"
    writes: dict[str, float] = field(default_factory=dict)
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
    def write_commits(self) -> float:
        """Commits per trial that wrote at least one row."""
        return sum(self.writes.values())

    @property
    def label(self) -> str:
        """``optuna bare`` or ``hpo``, with the worker count."""
        who = "optuna bare" if self.kind == "bare" else "hpo run_worker"
        return f"{who} x{self.workers}"

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
                f"overhead_ms_per_trial={self.overhead_ms:.1f} "
                f"commits_per_trial={self.commits:.1f} "
                f"write_commits_per_trial={self.write_commits:.1f}")

    def report(self) -> list[str]:
        """Human-readable lines describing the run (everything but the RESULT line)."""
        states = " ".join(f"{k}={v}" for k, v in sorted(self.states.items()))
        over = self.finished - self.budget
        writes = ", ".join(f"{k} {v:.1f}" for k, v in
                           sorted(self.writes.items(), key=lambda kv: -kv[1]))
        lines = [
            f"study {self.study} ({self.label}): ready in {self.startup_s:.1f} s "
            f"(imports: median {statistics.median(self.import_s):.1f} s per process)",
            f"trials by state: {states} (budget {self.budget}, finished {self.finished}"
            + (f", {over:+d} vs budget)" if over else ")"),
            f"wall {self.wall_s:.2f} s from the start line to the last worker's end; "
            f"trials/s {self.trials_per_s:.2f}",
            f"per trial: overhead {self.overhead_ms:.1f} ms (p50 {self.overhead_p50_ms:.1f}, "
            f"p95 {self.overhead_p95_ms:.1f}), of which in the database "
            f"{self.db_ms:.1f} ms ({self.statements:.0f} statements, {self.commits:.1f} "
            f"commits, {self.write_commits:.1f} that wrote); stand-in {self.standin_ms:.1f} ms; "
            f"worker CPU {self.cpu_ms:.1f} ms",
            f"write commits per trial by tables written: {writes or 'none'}",
            f"worker exit codes: {'all 0' if not any(self.exit_codes) else self.exit_codes}; "
            f"lock_errors={self.lock_errors}; 1-min load average {self.load_avg[0]:.1f} at "
            f"the start line, {self.load_avg[1]:.1f} at the end ({os.cpu_count()} CPUs)",
        ]
        if self.missing_stats:
            lines.append(f"  no timings from workers {self.missing_stats} (they did not finish "
                         "their run): the per-trial figures leave them out")
        lines += [f"  lock error: {line}" for line in self.lock_lines[:5]]
        for index, tail in self.stderr_tails.items():
            lines.append(f"  worker {index} stderr (tail):")
            lines += [f"    {line}" for line in tail.splitlines()]
        return lines


def _kind(url: str) -> str:
    from sqlalchemy.engine import make_url

    backend = make_url(url).get_backend_name()
    return "postgresql" if backend.startswith("postgres") else backend


@dataclass(frozen=True)
class _Plan:
    url: str
    study: str
    kind: Kind
    workers: int
    trials: int
    epochs: int
    sleep_ms: float
    sampler: str
    artifacts: Path
    sync: Path


def _spawn(plan: _Plan, index: int) -> tuple[subprocess.Popen, Path]:
    argv = [sys.executable, str(SCRIPT), "--worker", "--storage", plan.url,
            "--study", plan.study, "--trials", str(plan.trials), "--epochs", str(plan.epochs),
            "--sleep-ms", str(plan.sleep_ms), "--sampler", plan.sampler,
            "--artifacts", str(plan.artifacts), "--sync-dir", str(plan.sync),
            "--index", str(index), *(["--bare"] if plan.kind == "bare" else [])]
    err_path = plan.sync / f"worker-{index}.err"
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


def _wait_ready(plan: _Plan, procs: list[subprocess.Popen], errs: list[Path],
                spawned: float) -> list[float]:
    ready = [plan.sync / f"ready-{i}.json" for i in range(plan.workers)]
    while not all(p.exists() for p in ready):
        dead = [i for i, p in enumerate(procs) if p.poll() is not None]
        if dead or time.perf_counter() - spawned > STARTUP_TIMEOUT_S:
            raise RuntimeError(f"worker(s) {dead or 'all'} did not start: "
                               + errs[dead[0] if dead else 0].read_text()[-2000:])
        time.sleep(0.05)
    return [json.loads(p.read_text())["import_s"] for p in ready]


def _wait_done(procs: list[subprocess.Popen], *, timeout: float, trials: int) -> None:
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"the workers did not finish within {timeout:.0f} s "
                               f"(budget {trials} trials)") from None


def _scan_logs(errs: list[Path], codes: list[int]) -> tuple[list[str], dict[int, str]]:
    lock_lines, tails = [], {}
    for i, err in enumerate(errs):
        text = err.read_text(errors="replace")
        lock_lines += [line for line in text.splitlines() if LOCK_PATTERN.search(line)]
        if codes[i]:
            tails[i] = "\n".join(text.splitlines()[-15:])
    return lock_lines, tails


def _create_study(plan: _Plan):
    if plan.kind == "bare":
        import optuna

        return optuna.create_study(study_name=plan.study, storage=plan.url,
                                   direction="maximize")
    from hpo.run.study import create_or_resume

    # The parent creates the study before starting workers, as ``hpo launch`` does.
    spec = bench_spec(plan.study, trials=plan.trials, epochs=plan.epochs, sampler=plan.sampler)
    return create_or_resume(spec, storage=plan.url)


def _summarise(plan: _Plan, study, run: dict) -> LoadResult:
    from optuna.trial import TrialState

    stats = run["stats"]
    frozen = study.get_trials(deepcopy=False)
    states = {s.name: 0 for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL,
                                  TrialState.RUNNING)}
    for t in frozen:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    n = max(len(frozen), 1)
    wall = max((s["end"] for s in stats), default=run["go"]) - run["go"]
    per_trial = sorted(x for s in stats for x in s["overheads_s"])
    writes: Counter[str] = Counter()
    for s in stats:
        writes.update(s["writes"])

    def total(key: str) -> float:
        return sum(s[key] for s in stats)

    return LoadResult(
        storage=_kind(plan.url), study=plan.study, workers=plan.workers, budget=plan.trials,
        states=states, lock_errors=len(run["lock_lines"]), lock_lines=run["lock_lines"],
        exit_codes=run["codes"], startup_s=run["startup_s"], import_s=run["import_s"],
        wall_s=wall, trials_per_s=len(frozen) / wall if wall > 0 else 0.0,
        overhead_ms=1000 * (total("run_s") - total("standin_s")) / n,
        overhead_p50_ms=1000 * _quantile(per_trial, 0.5),
        overhead_p95_ms=1000 * _quantile(per_trial, 0.95),
        standin_ms=1000 * total("standin_s") / n,
        cpu_ms=1000 * (total("cpu_s") - total("standin_cpu_s")) / n,
        db_ms=1000 * total("db_s") / n, statements=total("statements") / n,
        commits=total("commits") / n, kind=plan.kind,
        writes={k: v / n for k, v in writes.items()}, load_avg=run["load_avg"],
        missing_stats=run["missing"], stderr_tails=run["tails"],
    )


def _run_workers(plan: _Plan, *, timeout: float, say: Callable[[str], None]) -> dict:
    procs: list[subprocess.Popen] = []
    errs: list[Path] = []
    try:
        spawned = time.perf_counter()
        for i in range(plan.workers):
            proc, err = _spawn(plan, i)
            procs.append(proc)
            errs.append(err)
        import_s = _wait_ready(plan, procs, errs, spawned)
        startup_s = time.perf_counter() - spawned
        say(f"{plan.workers} workers ready after {startup_s:.1f} s; go")
        load_go, go = os.getloadavg()[0], time.time()
        (plan.sync / "go").touch()
        _wait_done(procs, timeout=timeout, trials=plan.trials)
        codes = [p.returncode for p in procs]
        files = [plan.sync / f"stats-{i}.json" for i in range(plan.workers)]
        lock_lines, tails = _scan_logs(errs, codes)
        return {"stats": [json.loads(p.read_text()) for p in files if p.exists()],
                "missing": [i for i, p in enumerate(files) if not p.exists()],
                "codes": codes, "lock_lines": lock_lines, "tails": tails, "go": go,
                "startup_s": startup_s, "import_s": import_s,
                "load_avg": (load_go, os.getloadavg()[0])}
    finally:
        _stop_all(procs)


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
    kind: Kind = "hpo",
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
        kind: ``hpo`` (``run_worker``) or ``bare`` (a plain Optuna loop, see
            ``bench/storage_worker.py``; give it one worker).

    Returns:
        The measurements; ``result.ok`` is False when a trial failed or stayed RUNNING, a lock
        error was logged or a worker exited with an error.

    Raises:
        RuntimeError: a worker died before the start line or the run passed ``timeout``.
    """
    from hpo.store.storage import mask_url
    from hpo.store.url import resolve_storage

    say = log or (lambda message: None)
    sync = Path(tempfile.mkdtemp(prefix="bench-storage-"))
    art = Path(artifacts) if artifacts is not None else Path(
        tempfile.mkdtemp(prefix="bench-storage-artifacts-"))
    plan = _Plan(url=resolve_storage(storage).url, study=f"bench-storage-{uuid.uuid4().hex[:8]}",
                 kind=kind, workers=workers, trials=trials, epochs=epochs, sleep_ms=sleep_ms,
                 sampler=sampler, artifacts=art, sync=sync)
    study = _create_study(plan)
    say(f"storage {mask_url(plan.url)}, study {plan.study} ({kind}): {workers} workers, budget "
        f"{trials} trials, {epochs} epochs x {sleep_ms:g} ms, sampler {sampler}")
    try:
        run = _run_workers(plan, timeout=timeout, say=say)
    finally:
        shutil.rmtree(sync, ignore_errors=True)
        if artifacts is None:
            shutil.rmtree(art, ignore_errors=True)
    return _summarise(plan, study, run)


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    return values[min(len(values) - 1, int(q * len(values)))]
