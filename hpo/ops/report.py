"""What the read commands print: studies, a study's trials, its best trial; as tables or JSON.

Each report is built once as plain data (``*_data``), which ``-f json`` prints as it is and the
table renderers lay out; so the two formats never disagree. Nothing here writes to the storage.
"""
from __future__ import annotations

import json
import math
from datetime import datetime
from typing import Any, Literal

import optuna
from optuna.trial import TrialState

from hpo.run.study import StudyRecord
from hpo.store.records import trial_epochs_run, trial_metrics

__all__ = [
    "best_data",
    "best_table",
    "dumps",
    "status_data",
    "status_table",
    "studies_data",
    "studies_table",
]

_METRICS = ("f1", "accuracy", "mask_f1", "gender_f1", "age_f1")


def dumps(data: Any) -> str:
    """JSON for ``-f json``: sorted keys, non-finite numbers as null, dates as ISO text."""
    return json.dumps(_plain(data), indent=2, sort_keys=True, default=str)


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    return value


def _seconds(trial: optuna.trial.FrozenTrial) -> float | None:
    if trial.datetime_start is None:
        return None
    end = trial.datetime_complete or datetime.now()
    return round((end - trial.datetime_start).total_seconds(), 1)


def _trial_data(t: optuna.trial.FrozenTrial) -> dict[str, Any]:
    attrs = t.user_attrs
    return {
        "number": t.number,
        "state": t.state.name,
        "value": _value(t),
        "params": dict(t.params),
        "epochs": len(trial_epochs_run(t) or []) or None,
        "progress": attrs.get("progress"),
        "seconds": _seconds(t),
        "started": t.datetime_start,
        "retry_of": t.system_attrs.get("failed_trial"),
        "fail_reason": attrs.get("fail_reason") if t.state == TrialState.FAIL else None,
    }


def _value(t: optuna.trial.FrozenTrial) -> float | list[float] | None:
    if not t.values:
        return None
    return t.values[0] if len(t.values) == 1 else list(t.values)


def _sort_key(direction: str):
    sign = -1.0 if direction == "maximize" else 1.0

    def key(row: dict[str, Any]) -> tuple:
        value = row["value"]
        if not isinstance(value, (int, float)):  # none yet, or several objectives
            return (True, 0.0, row["number"])
        return (False, sign * value, row["number"])
    return key


def status_data(study: optuna.Study, record: StudyRecord, *,
                sort: Literal["number", "value"] = "number") -> dict[str, Any]:
    """Every trial of a study with its state, value, every sampled parameter, epochs, time.

    Args:
        study: the loaded study.
        record: its record (:func:`hpo.run.study.record_of`).
        sort: ``number`` (the default) or ``value`` (best first, trials without one last).

    Returns:
        ``{"study", "metric", "direction", "description", "trials": [...], "best"}``.
    """
    trials = [_trial_data(t) for t in study.get_trials(deepcopy=False)]
    if sort == "value":
        trials.sort(key=_sort_key(record.direction))
    best = _best_number(study)
    return {"study": record.name, "metric": record.metric, "direction": record.direction,
            "description": record.description, "trials": trials, "best": best}


def _best_number(study: optuna.Study) -> int | None:
    if len(study.directions) != 1:
        return None  # several objectives have a Pareto front, not one best trial
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return study.best_trial.number if any(t.value is not None for t in done) else None


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_short(v)}" for k, v in value.items()) + "}"
    return str(value)


def _shown_value(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(f"{v:.4g}" for v in value)
    return f"{value:.4f}" if value is not None else "-"


def status_table(data: dict[str, Any]) -> str:
    """The status table: one row per trial, full parameter keys, failure reasons whole."""
    metric = data["metric"]
    rows = [f"study {data['study']}: {len(data['trials'])} trials ({metric}, "
            f"{data['direction']})",
            f"{'trial':>5}  {'state':<8} {metric[:9]:>9}  {'epochs':>6}  {'time':>7}  params"]
    for t in data["trials"]:
        value = _shown_value(t["value"])
        epochs = str(t["epochs"]) if t["epochs"] else "-"
        progress = t["progress"] or {}
        if t["state"] == "RUNNING" and progress:
            epochs = f"{progress.get('epoch')}/{progress.get('epochs')}"
            current = progress.get(metric)
            value = f"({current:.4f})" if isinstance(current, (int, float)) else "-"
        seconds = f"{t['seconds']:.0f}s" if t["seconds"] is not None else "-"
        params = " ".join(f"{k}={_short(v)}" for k, v in t["params"].items())
        retry = f"  (retry of {t['retry_of']})" if t["retry_of"] is not None else ""
        rows.append(f"{t['number']:>5}  {t['state']:<8} {value:>9}  {epochs:>6}  "
                    f"{seconds:>7}  {params}{retry}")
        if t["fail_reason"]:
            rows.append(f"{'':>7}reason: {t['fail_reason']}")
    if data["best"] is not None:
        best = next(t for t in data["trials"] if t["number"] == data["best"])
        rows.append(f"best: trial {best['number']} {metric} {best['value']:.4f}")
    return "\n".join(rows)


def best_data(study: optuna.Study, record: StudyRecord) -> dict[str, Any] | None:
    """The best completed trial: number, value, metrics, best epoch, parameters (None: none)."""
    if _best_number(study) is None:
        return None
    t = study.best_trial
    metrics = trial_metrics(t)
    return {"study": record.name, "metric": record.metric, "number": t.number,
            "value": t.value, "metrics": {k: metrics[k] for k in _METRICS if k in metrics},
            "best_epoch": t.user_attrs.get("best_epoch"), "params": dict(t.params)}


def best_table(data: dict[str, Any]) -> str:
    """``hpo best`` as text."""
    lines = [f"best trial {data['number']}: {data['metric']} {data['value']:.4f}"]
    if data["metrics"]:
        shown = ", ".join(f"{k} {v:.4f}" for k, v in data["metrics"].items())
        lines.append(f"  metrics: {shown} (epoch {data['best_epoch']})")
    lines += [f"  {key} = {value}" for key, value in data["params"].items()]
    return "\n".join(lines)


def studies_data(summaries: list[optuna.study.StudySummary]) -> list[dict[str, Any]]:
    """One entry per study in the storage: name, trials, best value, metric, direction."""
    out = []
    for s in summaries:
        best = s.best_trial.value if s.best_trial is not None else None
        directions = [d.name.lower() for d in s.directions]
        direction = directions[0] if len(directions) == 1 else ",".join(directions)
        out.append({"name": s.study_name, "trials": s.n_trials, "best": best,
                    "metric": s.user_attrs.get("metric") or "value", "direction": direction,
                    "created": s.datetime_start,
                    "description": s.user_attrs.get("description") or ""})
    return out


def studies_table(rows: list[dict[str, Any]], *, storage: str, files: list[str]) -> str:
    """``hpo studies`` as text: the studies in the storage, then the study files found here."""
    lines = [f"storage {storage}"]
    if not rows:
        lines.append("  no studies yet; start one with: hpo launch --study NAME")
    for r in rows:
        best = f"{r['best']:.4f}" if r["best"] is not None else "-"
        lines.append(f"  {r['name']:<24} trials {r['trials']:<5} best {best:<8} "
                     f"({r['metric']}, {r['direction']})")
    lines.append(f"study files: {', '.join(files) or 'none'}")
    return "\n".join(lines)
