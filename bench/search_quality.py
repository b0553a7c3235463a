"""Search quality on real faces: does the search beat the hand recipe, the ensemble its best
member, and which pruner gets there in the fewest trial-seconds?

Runs a study file through the same commands users run (``hpo launch``, ``hpo promote``,
``hpo refit``, ``hpo predict``, subprocesses on one SQLite file) on a real-face dataset built
from ``../shared/data/utkmask`` (or ``--data``), then scores the eval people with
``eval/labels.csv``:

- ``hand``: the study's first enqueued trial (a team's recipe), on its own;
- ``best``: the search's best trial (by validation F1);
- ``ensemble``: ``hpo promote`` of the search's trials (greedy, selected on validation halves);
- ``refit``: ``hpo refit`` of the top configurations on k person-level folds, then ``hpo
  promote`` of the refit study (greedy on out-of-fold probabilities), predicting with every
  fold model;
- ``full``: ``hpo refit --full``: the same members, each also trained on every training person
  for its folds' median best epoch, predicting with the fold models and the full model
  (``fullonly``, in the table: with the full models alone).

Each gets macro-F1, per-task F1 (mask, gender, age) and the trial-seconds it cost (the sum of
the ``seconds`` its trials recorded: the hand recipe its own trial, best and ensemble the whole
search, refit the search and the fold trials).

The search runs without pruning, so every trial's whole learning curve is known; the pruners
are then measured on those curves (a replay: the same trials in the same order, each pruner
asked after every epoch, a pruned trial costing the epochs it ran): trial-seconds until a
trial that was not pruned reaches the unpruned search's best validation F1 minus 0.005. The
replay keeps the sampler's proposals fixed; a live pruned search would propose differently
after the first pruned trial. Ten trials in one order are one draw, so the replay also runs
on 19 shuffles of the same curves and reports in how many orders each pruner reached the
target and its median ratio to no pruning.

Every stage resumes: run it again with the same ``--out`` and finished stages are skipped.
The last lines are ``RESULT preset=... hand=... best=... ensemble=... refit=... full=...
age_best=... age_refit=... age_full=...`` and one ``PRUNER name=... seconds_to_target=...
ratio_to_none=... reached=k/20 median_ratio=...`` per pruner.

    python bench/search_quality.py --preset cpu --out /tmp/sq
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import yaml
from optuna.trial import TrialState
from sklearn.metrics import f1_score

from hpo.store.manifest import seal_manifest

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
UTKMASK = SHARED / "data" / "utkmask"
PRESETS = {
    # 64x64, 4 epochs, 10 trials, top 3 refit on 5 folds: about 20 minutes on 2 CPU cores. Five
    # folds, not three: a fold model then trains on 80 % of the people, as the search's trials
    # did (with 3 folds, 67 %: at 4 epochs each fold model was weaker than the trial it refits).
    "cpu": {"study": "faces-cpu", "people": 1200, "n_trials": 10, "top": 3, "folds": 5,
            "weights": SHARED / "weights", "fixed": {}},
    # 224x224, 12 epochs, 30 trials, top 3 refit on 5 folds: the GPU machine.
    "gpu": {"study": "faces-cpu", "people": None, "n_trials": 30, "top": 3, "folds": 5,
            "weights": SHARED / "weights",
            "fixed": {"epochs": 12, "data": {"img_size": [224, 224]}}},
    # Seconds, for the script's own test: synthetic faces, timm's test models.
    "tiny": {"study": "smoke", "people": None, "n_trials": 3, "top": 2, "folds": 2,
             "weights": None, "fixed": {}},
}
PRUNERS = ("none", "median", "successive_halving", "hyperband")
TARGET_SLACK = 0.005
REPLAY_ORDERS = 20


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def hpo(*args: str, env: dict) -> str:
    """Run ``hpo ARGS``; its output goes on; a failure ends the benchmark with its message."""
    log("hpo " + " ".join(args))
    out = subprocess.run([sys.executable, "-m", "hpo.cli", *args], cwd=REPO, env=env, text=True,
                         capture_output=True)
    if out.returncode != 0:
        sys.exit(f"hpo {args[0]} failed ({out.returncode}): {out.stderr.strip()[-2000:]}")
    return out.stdout


# ---------------------------------------------------------------------------------------------
# data and study


def build_data(out: Path, people: int | None, data: str | None) -> Path:
    if data:
        return Path(data)
    root = out / "data"
    if (root / "eval" / "labels.csv").is_file():
        return root
    log(f"building the real-face dataset from {UTKMASK} into {root}")
    cmd = [sys.executable, str(UTKMASK / "build.py"), "--sources", str(UTKMASK / "sources"),
           "--out", str(root), "--workers", str(os.cpu_count() or 1)]
    if people:
        cmd += ["--people", str(people)]
    subprocess.run(cmd, check=True)
    return root


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out


def write_study(out: Path, preset: dict, study: str | None, n_trials: int) -> tuple[Path, dict]:
    """The study file with pruning off (the replay needs whole curves); returns it and the
    original file's pruner settings."""
    from hpo.studyfile.files import find_study_file

    source = find_study_file(study or preset["study"])
    raw = yaml.safe_load(source.read_text())
    pruner = raw.get("pruner") or {"name": "median"}
    raw = _merge(raw, {"fixed": preset["fixed"]})
    raw.update({"pruner": {"name": "none"}, "n_trials": n_trials})
    path = out / f"{source.stem}-sq.yaml"
    if not path.is_file():
        path.write_text(f"# bench/search_quality.py: {source.name} without pruning\n"
                        + yaml.safe_dump(raw, sort_keys=False))
    return path, pruner


# ---------------------------------------------------------------------------------------------
# scoring


def score(submission: Path, labels_csv: Path) -> dict[str, float]:
    """Macro-F1 and per-task macro-F1 of a submission against eval/labels.csv."""
    from trainer import decode_label

    pred = pd.read_csv(submission).set_index("ImageID")["ans"]
    true = pd.read_csv(labels_csv).set_index("ImageID")["ans"]
    if set(pred.index) != set(true.index):
        sys.exit(f"{submission} does not cover the eval images of {labels_csv}")
    y, p = true.to_numpy(), pred.reindex(true.index).to_numpy()
    out = {"f1": f1_score(y, p, average="macro", zero_division=0)}
    for name, t, g in zip(("mask", "gender", "age"), decode_label(y), decode_label(p)):
        out[name] = f1_score(t, g, average="macro", zero_division=0)
    return {k: float(v) for k, v in out.items()}


def seconds(trials) -> float:
    return float(sum(t.user_attrs.get("seconds") or 0.0 for t in trials))


# ---------------------------------------------------------------------------------------------
# pruners, replayed on the unpruned search's curves


def make_pruner(name: str, original: dict, epochs: int) -> optuna.pruners.BasePruner:
    if name == "none":
        return optuna.pruners.NopPruner()
    if name == "median":
        options = {k: v for k, v in original.items() if k != "name"} \
            if original.get("name") == "median" else {}
        return optuna.pruners.MedianPruner(**options)
    if name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=2)
    return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs,
                                          reduction_factor=2)


def replay(trials, pruner: optuna.pruners.BasePruner, target: float) -> float:
    """Trial-seconds until an unpruned trial reaches ``target`` (inf: never)."""
    # a fixed name: hyperband puts a trial in a bracket by a hash of the study's name
    study = optuna.create_study(study_name="replay", direction="maximize", pruner=pruner,
                                sampler=optuna.samplers.RandomSampler(seed=0))
    spent = 0.0
    for t in trials:
        curve = sorted(t.intermediate_values.items())
        per_epoch = (t.user_attrs.get("seconds") or 0.0) / max(len(curve), 1)
        live = study.ask()
        pruned = False
        for step, value in curve:
            live.report(value, step)
            spent += per_epoch
            if live.should_prune():
                study.tell(live, state=TrialState.PRUNED)
                pruned = True
                break
        if pruned:
            continue
        study.tell(live, t.value)
        if t.value >= target:
            return spent
    return math.inf


def replay_orders(n_trials: int, orders: int) -> list[list[int]]:
    """The search's own order first, then ``orders - 1`` seeded shuffles of it."""
    rng = np.random.default_rng(0)
    return [list(range(n_trials))] + [list(rng.permutation(n_trials))
                                      for _ in range(orders - 1)]


def pruner_lines(trials, original: dict, epochs: int, orders: int = REPLAY_ORDERS) -> list[str]:
    """One PRUNER line per pruner: seconds to the target in the search's order and its ratio to
    no pruning; then, over ``orders`` orders of the same curves (one order of 10 trials is one
    draw: a pruner that cuts the eventual best trial in that order never gets there), in how
    many it reached the target and its median ratio to no pruning in the same order."""
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.intermediate_values]
    target = max(t.value for t in done) - TARGET_SLACK
    shuffled = [[done[i] for i in order] for order in replay_orders(len(done), orders)]
    costs = {name: [replay(ts, make_pruner(name, original, epochs), target) for ts in shuffled]
             for name in PRUNERS}
    lines = []
    for name in PRUNERS:
        first, base = costs[name][0], costs["none"][0]
        ratio = first / base if base else math.nan
        shown = "never" if math.isinf(first) else f"{first:.0f}"
        ratios = [c / b for c, b in zip(costs[name], costs["none"])]
        reached = sum(not math.isinf(c) for c in costs[name])
        lines.append(f"PRUNER name={name} seconds_to_target={shown} ratio_to_none={ratio:.2f} "
                     f"reached={reached}/{orders} median_ratio={float(np.median(ratios)):.2f}")
    return lines


# ---------------------------------------------------------------------------------------------
# the stages


def run(args: argparse.Namespace) -> None:
    preset = PRESETS[args.preset]
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HPO_STORAGE": f"sqlite:///{out / 'hpo.db'}",
           "HPO_ARTIFACTS": str(out / "artifacts")}
    if preset["weights"]:
        env["HPO_WEIGHTS_DIR"] = str(preset["weights"])
    if args.preset == "tiny":
        from trainer import make_dataset

        data = out / "data"
        if not (data / "eval" / "labels.csv").is_file():
            make_dataset(data, people=24, eval_people=6, size=(64, 48), seed=0)
    else:
        data = build_data(out, preset["people"], args.data)
    study_file, original = write_study(out, preset, args.study, args.n_trials
                                       or preset["n_trials"])
    name = study_file.stem
    start = time.perf_counter()
    hpo("launch", "--study", str(study_file), "--data", str(data / "train"), env=env)
    hpo("promote", "--study", name, "--name", "search", env=env)
    refit = ["refit", "--study", name, "--top", str(args.top or preset["top"]), "--folds",
             str(args.folds or preset["folds"])]
    hpo(*refit, env=env)
    hpo(*refit, "--full", env=env)
    hpo("promote", "--study", f"{name}-refit", "--name", "full", env=env)
    folds_only(out / "artifacts" / "ensembles", "full", "refit")
    full_only(out / "artifacts" / "ensembles", "full", "fullonly")
    storage = env["HPO_STORAGE"]
    search = optuna.load_study(study_name=name, storage=storage).trials
    refits = optuna.load_study(study_name=f"{name}-refit", storage=storage).trials
    folds = [t for t in refits if t.user_attrs.get("refit_fold") != "all"]
    best = max((t for t in search if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    which = {"hand": ["--study", name, "--trial", "0"],
             "best": ["--study", name, "--trial", str(best.number)],
             "ensemble": ["--ensemble", "search"], "refit": ["--ensemble", "refit"],
             "full": ["--ensemble", "full"], "fullonly": ["--ensemble", "fullonly"]}
    scores = {}
    for key, select in which.items():
        sub = out / f"submission-{key}.csv"
        hpo("predict", *select, "--data", str(data / "eval"), "--out", str(sub), env=env)
        scores[key] = score(sub, data / "eval" / "labels.csv")
    costs = {"hand": seconds(search[:1]), "best": seconds(search),
             "ensemble": seconds(search), "refit": seconds(search) + seconds(folds),
             "full": seconds(search) + seconds(refits),
             "fullonly": seconds(search) + seconds(refits)}
    report(args.preset, scores, costs, best, search, original, time.perf_counter() - start)


def folds_only(folder: Path, source: str, name: str) -> None:
    """Ensemble ``name``: ensemble ``source``'s members (the same selection, made on
    out-of-fold probabilities) with their fold models only, not their full models."""
    manifest = json.loads((folder / f"{source}.json").read_text())
    for member in manifest["members"]:
        member.pop("full", None)
    manifest["name"] = name
    # A new ensemble derived from a promoted one: sealed again, as hpo promote seals its own.
    (folder / f"{name}.json").write_text(json.dumps(seal_manifest(manifest), indent=1))


def full_only(folder: Path, source: str, name: str) -> None:
    """Ensemble ``name``: ensemble ``source``'s members, each predicting with its full model
    alone (what the fold models add, seen from the other side)."""
    manifest = json.loads((folder / f"{source}.json").read_text())
    for member in manifest["members"]:
        full = member.pop("full")
        member.pop("folds")
        member.update({k: full[k] for k in ("checkpoint", "artifact", "sha256")})
    manifest["name"] = name
    # A new ensemble derived from a promoted one: sealed again, as hpo promote seals its own.
    (folder / f"{name}.json").write_text(json.dumps(seal_manifest(manifest), indent=1))


def report(preset: str, scores: dict, costs: dict, best, search, original: dict,
           wall: float) -> None:
    print(f"\nsearch-quality preset={preset}, {len(search)} search trials, best trial "
          f"{best.number} (validation f1 {best.value:.4f}), wall {wall:.0f} s")
    print(f"{'':<9}{'f1':>7}{'mask':>7}{'gender':>8}{'age':>7}{'trial-s':>9}")
    for key, s in scores.items():
        print(f"{key:<9}{s['f1']:>7.4f}{s['mask']:>7.4f}{s['gender']:>8.4f}{s['age']:>7.4f}"
              f"{costs[key]:>9.0f}")
    print(json.dumps({"scores": scores, "trial_seconds": costs}))
    epochs = max((len(t.intermediate_values) for t in search), default=1)
    lines = [f"RESULT preset={preset} hand={scores['hand']['f1']:.4f} "
             f"best={scores['best']['f1']:.4f} ensemble={scores['ensemble']['f1']:.4f} "
             f"refit={scores['refit']['f1']:.4f} full={scores['full']['f1']:.4f} "
             f"age_best={scores['best']['age']:.4f} age_refit={scores['refit']['age']:.4f} "
             f"age_full={scores['full']['age']:.4f}"]
    lines += pruner_lines(search, original, epochs)
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--out", default="search-quality", help="Working folder (resumable).")
    parser.add_argument("--data", default=None,
                        help="A dataset root with train/ and eval/labels.csv (default: build "
                             "one from ../shared/data/utkmask).")
    parser.add_argument("--study", default=None, help="Study name or file (default: preset's).")
    parser.add_argument("--n-trials", type=int, default=None)
    parser.add_argument("--top", type=int, default=None, help="Configurations to refit.")
    parser.add_argument("--folds", type=int, default=None, help="Refit folds.")
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    np.seterr(all="ignore")
    run(args)


if __name__ == "__main__":
    main()
