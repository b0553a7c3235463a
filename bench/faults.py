"""Fault injection: a real study under ``hpo launch`` (2 workers, ``--heartbeat 1``), one fault.

    python bench/faults.py --out /tmp/faults                        # every scenario
    python bench/faults.py --out /tmp/faults --scenario kill_worker --storage sqlite:////tmp/f.db
    python bench/faults.py --out /tmp/faults --scenario pg_restart --pg-cluster 15/faults

Each scenario generates tiny competition data (``python -m trainer.synth``), writes a small
study (timm's ``test_resnet``, pretrained false, 64x48 images, on the CPU), runs ``hpo launch``
as a user does and injects its fault:

``pg_restart``     the PostgreSQL server restarts 3 times 12 s apart while trials run
``pg_outage``      the server is stopped for 25 s (the heartbeat's grace is 2 s), then started
``kill_worker``    a worker is SIGKILLed in mid-trial (epoch >= 2); the trial resumes elsewhere
``disk_readonly``  the artifact store stops taking files while a trial ends; afterwards
                   ``hpo retry`` + ``hpo launch`` finish it from its kept checkpoints
``store_readonly`` the artifact folder is a tmpfs remounted read-only mid-study (a trial done,
                   others training): the workers stop instead of failing the rest of the
                   budget; once it is writable again ``hpo retry`` + ``hpo launch`` finish
                   (needs root to mount; skipped otherwise)

The PostgreSQL scenarios run on a cluster of their own (``--pg-cluster VERSION/NAME``, default
``<newest>/faults`` on port 5433, created with trust authentication if missing: needs root and
Debian's pg_createcluster); the ``main`` cluster is refused unless ``--allow-main``. The others
use ``--storage`` (default a SQLite file per scenario under ``--out``). Per scenario::

    RESULT scenario=kill_worker trials=3 lost_epochs=0 running_left=0 tracebacks=0

``trials``: trials in the study at the end (retries included); ``lost_epochs``: epochs trained
twice (a failed trial reported them, its retry trained them again: it resumed from an earlier
checkpoint, or from none); ``running_left``: trials still RUNNING; ``tracebacks``: 'Traceback'
in the launcher's stderr (its workers write there too). ``store_readonly`` adds
``burnt``: trials started after the folder went read-only (each would fail at once and spend
the budget; 0 is the target). The exit status is 1 when a scenario left a trial RUNNING,
printed a traceback or burnt a trial.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import optuna
import yaml
from optuna.trial import TrialState

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.faults_pg import PgCluster, cluster_problem, ensure_cluster  # noqa: E402

__all__ = ["SCENARIOS", "Outcome", "lost_epochs", "main"]

SCENARIOS = ("pg_restart", "pg_outage", "kill_worker", "disk_readonly", "store_readonly")
_PG = ("pg_restart", "pg_outage")


@dataclass
class Outcome:
    """What one scenario left behind."""

    scenario: str
    trials: int
    lost_epochs: int
    running_left: int
    tracebacks: int
    exits: list[int]
    states: str
    burnt: int | None = None

    def line(self) -> str:
        burnt = "" if self.burnt is None else f" burnt={self.burnt}"
        return (f"RESULT scenario={self.scenario} trials={self.trials}{burnt} "
                f"lost_epochs={self.lost_epochs} running_left={self.running_left} "
                f"tracebacks={self.tracebacks}")


def lost_epochs(trials: list[optuna.trial.FrozenTrial]) -> int:
    """Epochs trained twice: those a failed trial reported that its retry trained again.

    A retry records where it resumed (``resumed_from``: trial and epoch of the checkpoint);
    every epoch its failed trial reported after that epoch was trained again (all of them when
    it resumed from nothing). A retry that adopts a recorded result trains nothing.
    """
    lost = 0
    for t in trials:
        failed = t.system_attrs.get("failed_trial")
        if failed is None or t.state == TrialState.WAITING:
            continue
        done = max(trials[failed].intermediate_values, default=0)
        resumed = t.user_attrs.get("resumed_from") or {}
        start = resumed.get("epoch", 0) if resumed.get("trial") == failed else 0
        trained = t.intermediate_values or {}
        if not trained and t.state == TrialState.COMPLETE and start == 0:
            continue  # adopted the failed trial's recorded result: nothing trained again
        lost += max(done - start, 0)
    return lost


def _study(out: Path, name: str, *, n_trials: int, epochs: int) -> Path:
    raw = {
        "description": f"bench/faults.py {name}",
        "n_trials": n_trials,
        "sampler": {"name": "random", "seed": 0},
        "pruner": {"name": "none"},
        "data": {"train_dir": "unused", "val_fraction": 0.34},
        "fixed": {"epochs": epochs, "batch_size": 8,
                  "data": {"img_size": [64, 48], "num_workers": 0},
                  "model": {"name": "test_resnet", "pretrained": False}},
        "space": {"optim.lr": {"type": "float", "low": 1e-3, "high": 3e-3, "log": True}},
    }
    path = out / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _data(out: Path) -> Path:
    root = out / "data"
    if not (root / "train").is_dir():
        subprocess.run([sys.executable, "-m", "trainer.synth", "--out", str(root), "--people",
                        "18", "--eval-people", "2", "--height", "64", "--width", "48"],
                       cwd=REPO, check=True, capture_output=True, text=True)
    return root / "train"


class _Run:
    """One ``hpo launch`` of a scenario's study, its output in files, its trials on demand."""

    def __init__(self, *, study: Path, storage: str, data: Path, folder: Path) -> None:
        self.name, self.storage, self.data, self.folder = study.stem, storage, data, folder
        self.study, self.exits, self.err_text = study, [], ""
        self.art = folder / "art"
        self.burnt: int | None = None

    def launch(self, *extra: str) -> subprocess.Popen:
        n = len(self.exits)
        self._out = open(self.folder / f"launch{n}.out", "w")  # noqa: SIM115 (closed in wait)
        self._err = open(self.folder / f"launch{n}.err", "w")  # noqa: SIM115
        env = {**os.environ, "HPO_STORAGE_RETRY_SECONDS": "180", "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hpo.cli", "launch", "--study", str(self.study), "--storage",
             self.storage, "--artifacts", str(self.art), "--data", str(self.data),
             "--workers", "2", "--heartbeat", "1", *extra],
            cwd=REPO, stdout=self._out, stderr=self._err, env=env, start_new_session=True)
        return self.proc

    def wait(self, timeout: float = 900) -> int:
        code = self.proc.wait(timeout=timeout)
        self._out.close()
        self._err.close()
        self.exits.append(code)
        self.err_text += (self.folder / f"launch{len(self.exits) - 1}.err").read_text()
        return code

    def trials(self) -> list[optuna.trial.FrozenTrial]:
        try:
            return optuna.load_study(study_name=self.name, storage=self.storage).trials
        except Exception:  # not created yet, or the database is away
            return []

    def until(self, ready: Callable[[list], bool], what: str, timeout: float = 600) -> list:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hpo launch exited ({self.proc.returncode}) before {what}; "
                                   f"see {self.folder}")
            trials = self.trials()
            if ready(trials):
                return trials
            time.sleep(0.3)
        raise TimeoutError(f"{what}: not within {timeout:.0f} s")

    def outcome(self, scenario: str) -> Outcome:
        trials = self.trials()
        counts: dict[str, int] = {}
        for t in trials:
            counts[t.state.name] = counts.get(t.state.name, 0) + 1
        return Outcome(scenario=scenario, trials=len(trials), lost_epochs=lost_epochs(trials),
                       running_left=counts.get("RUNNING", 0),
                       tracebacks=self.err_text.count("Traceback"), exits=self.exits,
                       states=", ".join(f"{k} {v}" for k, v in sorted(counts.items())),
                       burnt=self.burnt)


def _training(trials, *, epoch: int = 1, count: int = 2) -> bool:
    running = [t for t in trials if t.state == TrialState.RUNNING
               and max(t.intermediate_values, default=0) >= epoch]
    return len(running) >= count


def _pg_restart(run: _Run, cluster: PgCluster, args) -> None:
    run.launch()
    run.until(_training, "both workers training")
    for i in range(args.restarts):
        if i:
            time.sleep(args.restart_gap)
        cluster.restart()
        print(f"  restarted {cluster.version}/{cluster.name}", flush=True)
    run.wait()


def _pg_outage(run: _Run, cluster: PgCluster, args) -> None:
    run.launch()
    run.until(_training, "both workers training")
    cluster.stop()
    try:
        time.sleep(args.outage)
    finally:
        cluster.start()
    print(f"  {cluster.version}/{cluster.name} was down {args.outage:.0f} s", flush=True)
    run.wait()


def _kill_worker(run: _Run, cluster: PgCluster | None, args) -> None:
    run.launch()
    trials = run.until(lambda ts: _training(ts, epoch=2, count=1), "a trial at epoch 2")
    victim = max((t for t in trials if t.state == TrialState.RUNNING),
                 key=lambda t: max(t.intermediate_values, default=0))
    pid = int(str(victim.user_attrs["worker"]).rsplit(":", 1)[1])
    os.kill(pid, signal.SIGKILL)
    print(f"  SIGKILLed worker pid {pid} in trial {victim.number} after epoch "
          f"{max(victim.intermediate_values)}", flush=True)
    run.wait()


def _disk_readonly(run: _Run, cluster: PgCluster | None, args) -> None:
    run.launch()
    trials = run.until(lambda ts: _training(ts, epoch=args.epochs - 1, count=1),
                       "a trial in its last epoch")
    store, saved = run.art / "store", run.art / "store.saved"
    # As a read-only or vanished mount looks to a root process (which ignores permissions).
    if store.exists():
        os.replace(store, saved)
    store.write_text("not a folder: the store is read-only")
    number = next(t.number for t in trials if t.state == TrialState.RUNNING)
    print(f"  store unwritable while trial {number} ends", flush=True)
    try:
        run.until(lambda ts: ts[number].state.is_finished(), f"trial {number} to end")
    finally:
        store.unlink()
        if saved.exists():
            os.replace(saved, store)
    run.wait()
    # the fix the failure names: queue the trial again, run it from its kept checkpoints
    subprocess.run([sys.executable, "-m", "hpo.cli", "retry", "--study", run.name,
                    "--storage", run.storage], cwd=REPO, check=False, capture_output=True)
    run.launch()
    run.wait()


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True, text=True, timeout=60)


def mount_problem(folder: Path) -> str | None:
    """Why this machine cannot mount a tmpfs for store_readonly (None: it can)."""
    probe = folder / "mount-probe"
    probe.mkdir(parents=True, exist_ok=True)
    try:
        _mount("-t", "tmpfs", "-o", "size=1m", "tmpfs", str(probe))
    except (OSError, subprocess.CalledProcessError) as exc:
        return f"cannot mount a tmpfs here ({getattr(exc, 'stderr', '') or exc})".strip()
    subprocess.run(["umount", "-l", str(probe)], capture_output=True, timeout=60)
    return None


def _store_readonly(run: _Run, cluster: PgCluster | None, args) -> None:
    run.art.mkdir(parents=True, exist_ok=True)
    _mount("-t", "tmpfs", "-o", "size=256m", "tmpfs", str(run.art))
    try:
        run.launch()
        trials = run.until(lambda ts: any(t.state == TrialState.COMPLETE for t in ts)
                           and any(t.state == TrialState.RUNNING for t in ts),
                           "one trial done and another training")
        _mount("-o", "remount,ro", str(run.art))
        before = len(trials)
        print(f"  artifact folder read-only after {before} trial(s) started", flush=True)
        run.wait()
        run.burnt = len(run.trials()) - before
        _mount("-o", "remount,rw", str(run.art))
        subprocess.run([sys.executable, "-m", "hpo.cli", "retry", "--study", run.name,
                        "--storage", run.storage], cwd=REPO, check=False, capture_output=True)
        run.launch()
        run.wait()
    finally:
        subprocess.run(["umount", "-l", str(run.art)], capture_output=True, timeout=60)


_RUNNERS = {"pg_restart": _pg_restart, "pg_outage": _pg_outage,
            "kill_worker": _kill_worker, "disk_readonly": _disk_readonly,
            "store_readonly": _store_readonly}
_SHAPES = {"pg_restart": (3, 6), "pg_outage": (2, 4), "kill_worker": (2, 6),
           "disk_readonly": (2, 3), "store_readonly": (6, 3)}  # (n_trials, epochs)


@contextmanager
def _pg_database(cluster: PgCluster):
    import psycopg

    name = f"hpo_faults_{uuid.uuid4().hex[:8]}"
    admin = dict(host="127.0.0.1", port=cluster.port, user="postgres", dbname="postgres")
    with psycopg.connect(**admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield cluster.url(name)
    finally:
        with psycopg.connect(**admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run_scenario(scenario: str, args, cluster: PgCluster | None) -> Outcome:
    """Run one scenario in ``args.out/<scenario>`` and return what it left."""
    folder = args.out / scenario
    folder.mkdir(parents=True, exist_ok=True)
    n_trials, epochs = _SHAPES[scenario]
    epochs = max(args.epochs or epochs, 2)
    args_for = argparse.Namespace(**{**vars(args), "epochs": epochs})
    study = _study(folder, f"faults_{scenario}", n_trials=n_trials, epochs=epochs)
    data = _data(args.out)
    with _storage_for(scenario, args, cluster, folder) as storage:
        run = _Run(study=study, storage=storage, data=data, folder=folder)
        _RUNNERS[scenario](run, cluster, args_for)
        return run.outcome(scenario)


@contextmanager
def _storage_for(scenario: str, args, cluster: PgCluster | None, folder: Path):
    if scenario in _PG:
        assert cluster is not None
        with _pg_database(cluster) as url:
            yield url
        return
    if args.storage:
        try:  # a fresh study each time
            optuna.delete_study(study_name=f"faults_{scenario}", storage=args.storage)
        except Exception:
            pass
        yield args.storage
        return
    db = folder / "hpo.db"
    db.unlink(missing_ok=True)
    yield f"sqlite:///{db}"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="working folder (data, runs)")
    parser.add_argument("--storage", default=None, metavar="URL",
                        help="storage of kill_worker and disk_readonly (default: a SQLite file "
                             "per scenario under --out)")
    parser.add_argument("--scenario", action="append", choices=SCENARIOS,
                        help="repeatable; default: all")
    parser.add_argument("--pg-cluster", default=None, metavar="VERSION/NAME",
                        help="the PostgreSQL cluster to restart and stop (default: "
                             "<newest>/faults on port 5433, created if missing)")
    parser.add_argument("--allow-main", action="store_true",
                        help="allow --pg-cluster to name a 'main' cluster")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs per trial (default: 6, 4 for pg_outage, 3 for disk_readonly)")
    parser.add_argument("--restarts", type=int, default=3)
    parser.add_argument("--restart-gap", type=float, default=12.0, help="seconds")
    parser.add_argument("--outage", type=float, default=25.0, help="seconds stopped")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    scenarios = args.scenario or list(SCENARIOS)
    cluster = None
    if any(s in _PG for s in scenarios):
        problem = cluster_problem()
        if problem:
            for s in [s for s in scenarios if s in _PG]:
                print(f"SKIP scenario={s} reason={problem!r}", flush=True)
            scenarios = [s for s in scenarios if s not in _PG]
        else:
            try:
                cluster = ensure_cluster(args.pg_cluster, allow_main=args.allow_main)
            except ValueError as exc:
                print(f"Error: {exc}", file=sys.stderr)
                return 2
    if "store_readonly" in scenarios:
        problem = mount_problem(args.out)
        if problem:
            print(f"SKIP scenario=store_readonly reason={problem!r}", flush=True)
            scenarios = [s for s in scenarios if s != "store_readonly"]
    bad = 0
    for scenario in scenarios:
        started = time.monotonic()
        print(f"scenario {scenario}", flush=True)
        outcome = run_scenario(scenario, args, cluster)
        print(f"  {time.monotonic() - started:.0f} s; launch exit codes "
              f"{' '.join(map(str, outcome.exits))}; trials {outcome.states}", flush=True)
        print(outcome.line(), flush=True)
        bad += outcome.running_left > 0 or outcome.tracebacks > 0 or bool(outcome.burnt)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
