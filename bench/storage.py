"""Storage load: many worker processes share one study, each running the real trial code path.

    python bench/storage.py --storage sqlite:///load.db --workers 8 --trials 500
    python bench/storage.py --storage sqlite:////tmp/load.db \\
        --storage postgresql://postgres@127.0.0.1:5432/test --workers 8 --trials 500 \\
        --sequential-baseline

starts ``--workers`` worker processes (subprocesses of this script, as ``hpo launch`` starts
``hpo worker``) on one fresh study. Each runs :func:`hpo.run.worker.run_worker` unchanged (budget
counting, retries, the real :class:`hpo.run.objective.Objective`: suggestions, config building,
per-epoch report and pruning, user attributes, artifact upload) with ``fit=`` a stand-in for
``trainer.fit`` that sleeps ``--sleep-ms`` per epoch instead of training, and writes the files a
real run writes. Every worker gets the study's whole budget (``--trials``), so they stop together.

The workers import everything first and wait at a start line, so the timing leaves out
interpreter start-up (reported on its own). Printed: trials by state (only COMPLETE and PRUNED is
a pass), wall seconds from the start line to the last worker's end, trials/s, the per-trial
overhead, the database's share of it, commits per trial (all, and those that wrote, by the
tables they wrote: see ``bench/storage_probe.py``) and the number of lock / connection errors in
the workers' logs, and last, per storage::

    RESULT storage=sqlite workers=8 trials=500 failed=0 running=0 lock_errors=0 \\
        trials_per_s=... overhead_ms_per_trial=... commits_per_trial=... \\
        write_commits_per_trial=...

``overhead_ms_per_trial`` is the time the workers spent in ``run_worker`` that was not the
stand-in's own work (its sleeps and file writes), summed over workers, divided by the trials in
the study: budget counting, sampling, pruning, every storage read and write, the artifact upload
and the confusion PNG; with more workers than cores it also holds the wait for a core.

``--sequential-baseline`` first runs, on each storage, Optuna's bare loop with one worker
(``optuna.create_study`` + ``study.optimize`` of the same trial: the same space, sampler, pruner,
epochs and sleeps, nothing of ours; see ``bench/storage_worker.py``) and ``run_worker`` with one
worker, each on a fresh study, prints them side by side (ms/trial next to commits/trial) and the
throughput ratio of the ``--workers`` run to the one-worker run. ``--storage`` may be given more
than once. The exit status is 1 when a trial failed or stayed RUNNING, a lock error was logged,
or a worker exited with an error.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.storage_load import LOCK_PATTERN, LoadResult, run_load  # noqa: E402
from bench.storage_standin import BareObjective, StandInFit, bench_spec  # noqa: E402
from bench.storage_worker import worker_process  # noqa: E402

__all__ = ["LOCK_PATTERN", "BareObjective", "LoadResult", "StandInFit", "bench_spec", "main",
           "run_load", "side_by_side"]


def side_by_side(results: list[LoadResult]) -> list[str]:
    """A table of runs: ms/trial next to commits/trial, and the write commits by tables.

    Args:
        results: the runs to compare (e.g. bare Optuna and ``run_worker``, per storage).

    Returns:
        Printable lines.
    """
    lines = [f"{'storage':<11} {'run':<19} {'trials':>6} {'ms/trial':>9} {'p50':>6} "
             f"{'db ms':>6} {'commits':>8} {'writes':>7}  write commits by tables written"]
    for r in results:
        writes = ", ".join(f"{k} {v:.1f}" for k, v in
                           sorted(r.writes.items(), key=lambda kv: -kv[1]))
        lines.append(f"{r.storage:<11} {r.label:<19} {r.trials:>6} {r.overhead_ms:>9.1f} "
                     f"{r.overhead_p50_ms:>6.1f} {r.db_ms:>6.1f} {r.commits:>8.1f} "
                     f"{r.write_commits:>7.1f}  {writes}")
    return lines


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--storage", required=True, action="append",
                        help="sqlite:///FILE or postgresql://USER@HOST:PORT/DB (repeatable)")
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
                        help="also run Optuna's bare loop and run_worker with 1 worker each, "
                             "side by side")
    parser.add_argument("--timeout", type=float, default=1800.0,
                        help="stop the workers after this many seconds (default 1800)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--bare", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--study", help=argparse.SUPPRESS)
    parser.add_argument("--sync-dir", help=argparse.SUPPRESS)
    parser.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    return parser


def _bench_one(args: argparse.Namespace, url: str) -> list[LoadResult]:
    def run(workers: int, kind: str = "hpo") -> LoadResult:
        result = run_load(url, workers=workers, trials=args.trials, sleep_ms=args.sleep_ms,
                          epochs=args.epochs, sampler=args.sampler, artifacts=args.artifacts,
                          timeout=args.timeout, log=lambda m: print(m, flush=True), kind=kind)
        for line in result.report():
            print(line, flush=True)
        return result

    results = []
    if args.sequential_baseline:
        bare = run(1, "bare")
        print("BARE" + bare.result_line().removeprefix("RESULT"), flush=True)
        baseline = run(1)
        print("BASELINE" + baseline.result_line().removeprefix("RESULT"), flush=True)
        results += [bare, baseline]
        if args.workers == 1:
            return results
    result = run(args.workers)
    if args.sequential_baseline:
        one = results[-1]
        ratio = result.trials_per_s / one.trials_per_s if one.trials_per_s else 0.0
        print(f"RATIO trials_per_s workers={args.workers} / workers=1: {ratio:.2f}x "
              f"({result.trials_per_s:.2f} / {one.trials_per_s:.2f})", flush=True)
    return [*results, result]


def main(argv: list[str] | None = None) -> int:
    """Command line: the benchmark (default) or one worker (``--worker``, internal).

    Args:
        argv: the arguments (default ``sys.argv[1:]``).

    Returns:
        The exit status: 0 when every run passed.
    """
    parser = _parser()
    args = parser.parse_args(argv)
    if args.workers < 1 or args.trials < 1 or args.epochs < 1 or args.sleep_ms < 0:
        parser.error("--workers, --trials and --epochs must be >= 1 and --sleep-ms >= 0")
    if args.worker:
        args.storage = args.storage[-1]
        return worker_process(args)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "A new study created" lines
    results = [r for url in args.storage for r in _bench_one(args, url)]
    if args.sequential_baseline:
        print(f"SIDE BY SIDE: per trial, {args.epochs} epochs x {args.sleep_ms:g} ms, "
              f"sampler {args.sampler}, median pruner", flush=True)
        for line in side_by_side(results):
            print(line, flush=True)
    for r in results:
        if r.workers == args.workers and r.kind == "hpo":
            print(r.result_line(), flush=True)
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
