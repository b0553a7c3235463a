"""``hpo demo [DIR]``: the whole flow in one command, on generated demo data.

Makes drawn faces in the competition layout (``DIR/train``, ``DIR/eval``), runs the shipped
``smoke`` study into ``DIR/hpo.db`` with its files in ``DIR/artifacts``, promotes the best trials
to an ensemble and writes ``DIR/submission.csv``, saying where each result went. Run again, it
reuses the data and the finished study (the budget is met) and writes the submission again.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hpo.ensemble.predict import predict_submission
from hpo.ensemble.promote import promote
from hpo.errors import HpoError
from hpo.ops.report import best_data
from hpo.run.launcher import budget_met, prepare_launch, run_workers
from hpo.run.study import load, record_of
from trainer import make_dataset

__all__ = ["DemoResult", "run_demo"]

DEMO_PEOPLE = 60
DEMO_EVAL_PEOPLE = 12
DEMO_SIZE = (96, 72)


@dataclass(frozen=True)
class DemoResult:
    """Where the demo put things, and how the best trial and the ensemble scored."""

    folder: Path
    storage: str
    best_f1: float | None
    ensemble_f1: float
    submission: Path


def run_demo(folder: str | Path, *, echo: Callable[[str], None] = print) -> DemoResult:
    """Run the demo in ``folder`` (created if missing); ``echo`` gets one line per step.

    Raises:
        HpoError, DataError: as the commands it runs (``hpo launch``, promote, predict).
    """
    root = Path(folder).resolve()
    if not (root / "train").is_dir():
        echo(f"1/4 making demo data ({DEMO_PEOPLE} people, {DEMO_EVAL_PEOPLE} to predict) "
             f"in {root}")
        make_dataset(root, people=DEMO_PEOPLE, eval_people=DEMO_EVAL_PEOPLE, size=DEMO_SIZE)
    else:
        echo(f"1/4 demo data: {root / 'train'} (already there)")
    storage = f"sqlite:///{root / 'hpo.db'}"
    artifacts = str(root / "artifacts")
    plan = prepare_launch("smoke", storage=storage, train_dir=str(root / "train"),
                          n_trials=None, timeout=None, heartbeat=30, artifacts=artifacts)
    echo(f"2/4 study smoke ({plan.target} trials) in {storage}, trial files in {artifacts}")
    met = budget_met(plan)
    if met:
        echo(f"    {met}")
    else:
        codes, stopped = run_workers(plan, devices=[None])
        if stopped:
            raise KeyboardInterrupt
        if any(codes):
            raise HpoError(f"the demo's worker exited with code {max(codes)} (see above); "
                           f"look at the trials with: hpo status --study smoke --storage "
                           f"{storage}")
    study = load("smoke", storage=storage)
    best = best_data(study, record_of(study))
    result = promote(study, name="smoke-greedy", artifacts=artifacts)
    echo(f"3/4 ensemble smoke-greedy ({len(result.manifest['members'])} member(s)): "
         f"{result.manifest_path}")
    out = root / "submission.csv"
    frame = predict_submission(ensemble="smoke-greedy", eval_dir=root / "eval", out=out,
                               artifacts=artifacts)
    echo(f"4/4 submission ({len(frame)} images): {out}")
    return DemoResult(folder=root, storage=storage,
                      best_f1=best["value"] if best else None,
                      ensemble_f1=float(result.manifest["f1"]["all"]), submission=out)
