"""What a running study looks like: the status table and the live progress display."""
from __future__ import annotations

import sys
import time
from datetime import datetime

import optuna
from optuna.trial import TrialState

__all__ = ["status_table", "progress_line", "watch"]

_KEY_PARAMS = ("model.name", "optim.name", "optim.lr", "batch_size", "loss.rest",
               "loss.f1_weight", "data.mixup", "data.cutmix")


def _duration(trial: optuna.trial.FrozenTrial) -> str:
    if trial.datetime_start is None:
        return "-"
    end = trial.datetime_complete or datetime.now()
    return f"{(end - trial.datetime_start).total_seconds():.0f}s"


def _short(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def status_table(study: optuna.Study, *, metric: str = "f1") -> str:
    """One row per trial: number, state, value, key params, epochs, duration, progress."""
    trials = study.get_trials(deepcopy=False)
    header = f"{'trial':>5}  {'state':<8} {metric:>7}  {'epochs':>6}  {'time':>6}  params"
    rows = [f"study {study.study_name}: {len(trials)} trials", header]
    for t in trials:
        value = f"{t.value:.4f}" if t.value is not None else "-"
        progress = t.user_attrs.get("progress") or {}
        epochs = t.user_attrs.get("epochs_run")
        if t.state == TrialState.RUNNING and progress:
            ep = f"{progress['epoch']}/{progress['epochs']}"
            value = f"({progress.get(metric, float('nan')):.4f})"
        elif epochs:
            ep = str(len(epochs))
        else:
            ep = "-"
        params = " ".join(f"{k.split('.')[-1]}={_short(t.params[k])}" for k in _KEY_PARAMS
                          if k in t.params)
        extra = ""
        if t.state == TrialState.FAIL and t.user_attrs.get("fail_reason"):
            extra = f"  [{t.user_attrs['fail_reason'][:80]}]"
        if "failed_trial" in t.system_attrs:
            extra += f"  (retry of {t.system_attrs['failed_trial']})"
        rows.append(f"{t.number:>5}  {t.state.name:<8} {value:>7}  {ep:>6}  "
                    f"{_duration(t):>6}  {params}{extra}")
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    if done:
        rows.append(f"best: trial {study.best_trial.number} {metric} {study.best_value:.4f}")
    return "\n".join(rows)


def progress_line(study: optuna.Study, *, metric: str, target: int | None) -> str:
    """A one-line summary: counts by state, running trials' epochs, best so far."""
    trials = study.get_trials(deepcopy=False)
    counts = {s: sum(1 for t in trials if t.state == s) for s in TrialState}
    running = []
    for t in trials:
        if t.state == TrialState.RUNNING:
            p = t.user_attrs.get("progress")
            running.append(f"#{t.number} " + (f"ep {p['epoch']}/{p['epochs']} "
                                               f"{p.get(metric, 0):.3f}" if p else "starting"))
    done = counts[TrialState.COMPLETE]
    best = f"best {study.best_value:.4f} (#{study.best_trial.number})" if done else "best -"
    total = f"/{target}" if target else ""
    return (f"[{time.strftime('%H:%M:%S')}] complete {done}{total} pruned "
            f"{counts[TrialState.PRUNED]} failed {counts[TrialState.FAIL]} | {best} | "
            f"running: {', '.join(running) or '-'}")


def watch(study: optuna.Study, procs, *, metric: str, target: int | None,
          every: float = 5.0, stream=None) -> None:
    """Print a progress line whenever it changes until every worker process has exited."""
    stream = stream or sys.stdout
    last = ""
    while True:
        alive = any(p.poll() is None for p in procs)
        try:
            line = progress_line(study, metric=metric, target=target)
        except Exception as exc:  # a database blip must not kill the display
            line = f"(progress unavailable: {type(exc).__name__})"
        core = line.split("] ", 1)[-1]
        if core != last:
            print(line, file=stream, flush=True)
            last = core
        if not alive:
            return
        time.sleep(every)
