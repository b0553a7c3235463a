"""Completed trials per hour of one small study with 1 and 2 workers on this machine, with each
worker's CPU share (hpo.run.cpu) and without it (``HPO_CPU_SHARE=off``: torch's own threads).

    python bench/cpu_share.py --out /tmp/cpushare [--trials 6] [--model resnet18]

Prints, side by side in one run (run it alone: another torch process on the machine skews it)::

    RESULT settings=before workers=1 trials_per_hour=X
    RESULT settings=before workers=2 trials_per_hour=Y ratio=Y/X
    RESULT settings=after workers=1 trials_per_hour=X
    RESULT settings=after workers=2 trials_per_hour=Y ratio=Y/X

The target (issue 17): with the share, 2 workers at least 1.0x of 1 worker.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def _data(out: Path) -> Path:
    root = out / "data"
    if not (root / "train").is_dir():
        subprocess.run([sys.executable, "-m", "trainer.synth", "--out", str(root), "--people",
                        "30", "--eval-people", "2", "--height", "64", "--width", "48"],
                       cwd=REPO, check=True, capture_output=True, text=True)
    return root / "train"


def _study(out: Path, *, trials: int, model: str, epochs: int) -> Path:
    raw = {
        "description": "bench/cpu_share.py",
        "n_trials": trials,
        "sampler": {"name": "random", "seed": 0},
        "pruner": {"name": "none"},
        "data": {"train_dir": "unused", "val_fraction": 0.2},
        "fixed": {"epochs": epochs, "batch_size": 32,
                  "data": {"img_size": [64, 48], "num_workers": 0},
                  "model": {"name": model, "pretrained": False}},
        "space": {"optim.lr": {"type": "float", "low": 1e-3, "high": 3e-3, "log": True}},
    }
    path = out / "cpushare.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _launch(out: Path, study: Path, data: Path, *, workers: int, share: bool) -> float:
    """Seconds for ``hpo launch`` to finish the study with ``workers`` workers."""
    tag = f"{'after' if share else 'before'}-{workers}"
    env = {**os.environ, "HPO_CPU_SHARE": "on" if share else "off"}
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "HPO_CPUS"):
        env.pop(name, None)
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "hpo.cli", "launch", "--study", str(study), "--data", str(data),
         "--workers", str(workers), "--storage", f"sqlite:///{out}/{tag}.db", "--artifacts",
         str(out / f"art-{tag}")], cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"hpo launch ({tag}) failed:\n{done.stderr[-2000:]}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--model", default="resnet18")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    data = _data(args.out)
    study = _study(args.out, trials=args.trials, model=args.model, epochs=args.epochs)
    for share in (False, True):
        settings = "after" if share else "before"
        one = args.trials * 3600 / _launch(args.out, study, data, workers=1, share=share)
        print(f"RESULT settings={settings} workers=1 trials_per_hour={one:.1f}", flush=True)
        two = args.trials * 3600 / _launch(args.out, study, data, workers=2, share=share)
        print(f"RESULT settings={settings} workers=2 trials_per_hour={two:.1f} "
              f"ratio={two / one:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
