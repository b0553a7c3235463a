"""What a running study looks like: the live progress line of ``hpo launch``.

::

    [12:00:01] finished 5/12: complete 3, pruned 2, failed 0 | best 0.4123 (#3) |
    running: #5 ep 2/4 0.301 | 3m10s, 94.7 trials/h, ETA 4m26s

"finished" counts trial lineages as the budget does: a trial that failed and was retried counts
once, by its retry.
"""
from __future__ import annotations

import sys
import time

import optuna
from optuna.trial import TrialState

from hpo.run.budget import retried_numbers

__all__ = ["Counts", "count_trials", "duration", "progress_line", "size_text", "watch"]


class Counts:
    """Finished lineages of a study by how they ended, and the trials running now."""

    def __init__(self, trials: list[optuna.trial.FrozenTrial]) -> None:
        retried = retried_numbers(trials)
        final = [t for t in trials if t.number not in retried]
        self.complete = sum(t.state == TrialState.COMPLETE for t in final)
        self.pruned = sum(t.state == TrialState.PRUNED for t in final)
        self.failed = sum(t.state == TrialState.FAIL for t in final)
        self.running = [t for t in trials if t.state == TrialState.RUNNING]
        self.waiting = sum(t.state == TrialState.WAITING for t in trials)

    @property
    def finished(self) -> int:
        """Lineages that ended (complete, pruned, or failed and not retried)."""
        return self.complete + self.pruned + self.failed


def count_trials(study: optuna.Study) -> Counts:
    """The study's :class:`Counts` now."""
    return Counts(study.get_trials(deepcopy=False))


def duration(seconds: float) -> str:
    """``3h05m``, ``4m26s`` or ``12s``."""
    seconds = int(round(max(seconds, 0)))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def size_text(n: int) -> str:
    """``1.5 GB``, ``44.0 MB``, ``12 KB`` or ``0 B``."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}" if unit != "KB" else f"{n / size:.0f} {unit}"
    return f"{n} B"


def _running(c: Counts, metric: str) -> str:
    shown = []
    for t in c.running:
        p = t.user_attrs.get("progress")
        # a refit's full model validates on nobody: its progress has no metric
        score = f" {p[metric]:.3f}" if p and isinstance(p.get(metric), (int, float)) else ""
        shown.append(f"#{t.number} " + (f"ep {p['epoch']}/{p['epochs']}{score}" if p
                                         else "starting"))
    return ", ".join(shown) or "-"


def _pace(finished_here: int, elapsed: float, remaining: int | None) -> str:
    pace = duration(elapsed)
    if finished_here and elapsed > 0:
        rate = finished_here / elapsed * 3600
        pace += f", {rate:.1f} trials/h"
        if remaining:
            pace += f", ETA {duration(remaining / rate * 3600)}"
    return pace


def progress_line(study: optuna.Study, *, metric: str, target: int | None,
                  started: float | None = None, finished_before: int = 0) -> str:
    """A one-line summary of a running study.

    Args:
        study: the study.
        metric: the name of the study's metric.
        target: the trial budget (None: no budget).
        started: ``time.monotonic()`` when this launch started (for the pace and ETA).
        finished_before: lineages finished before this launch started.

    Returns:
        Finished lineages against the budget by state, the best trial, running trials' epochs
        and, with ``started``, the elapsed time, trials per hour and an ETA.
    """
    c = count_trials(study)
    best = "best -"
    if c.complete:
        best = f"best {study.best_value:.4f} (#{study.best_trial.number})"
    total = f"/{target}" if target else ""
    line = (f"[{time.strftime('%H:%M:%S')}] finished {c.finished}{total}: complete "
            f"{c.complete}, pruned {c.pruned}, failed {c.failed} | {best} | running: "
            f"{_running(c, metric)}")
    if started is not None:
        remaining = max(target - c.finished, 0) if target else None
        line += " | " + _pace(c.finished - finished_before, time.monotonic() - started,
                              remaining)
    return line


def watch(study: optuna.Study, procs, *, metric: str, target: int | None,
          every: float = 5.0, stream=None) -> None:
    """Print a progress line whenever its counts change until every worker process has exited.

    The last line, printed when the workers are done, always shows the final counts.
    """
    stream = stream or sys.stdout
    started = time.monotonic()
    try:
        finished_before = count_trials(study).finished
    except Exception:  # a database blip must not kill the display
        finished_before = 0
    last = ""
    while True:
        alive = any(p.poll() is None for p in procs)
        try:
            line = progress_line(study, metric=metric, target=target, started=started,
                                 finished_before=finished_before)
        except Exception as exc:
            line = f"(progress unavailable: {type(exc).__name__})"
        # the clock and the pace change every time; print when the counts change
        core = line.split("] ", 1)[-1].rsplit(" | ", 1)[0]
        if core != last or not alive:
            print(line, file=stream, flush=True)
            last = core
        if not alive:
            return
        time.sleep(every)
