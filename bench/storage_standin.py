"""The storage benchmark's study and its trainer stand-in (they run inside the workers).

:func:`bench_spec` is the study every run uses; :class:`StandInFit` has ``trainer.fit``'s
signature and sleeps instead of training, writing the files a real trial writes;
:class:`BareObjective` is the same trial as a plain Optuna objective (suggest, sleep, report,
prune; no attributes, no files), the floor that Optuna itself costs.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

_VAL_ROWS = 54  # 3 validation images per class


def bench_spec(name: str, *, trials: int, epochs: int = 3, sampler: str = "tpe"):
    """The benchmark's study: a small space, TPE (or random), the median pruner.

    Built in code with :func:`hpo.studyfile.parse.parse_study_spec`, so it is validated like a
    study file.
    ``data.train_dir`` names no real folder: the stand-in never reads it.

    Args:
        name: the study name (fresh per run).
        trials: the study's ``n_trials``.
        epochs: epochs per trial (one report and one pruning decision each).
        sampler: ``tpe`` or ``random``.

    Returns:
        The validated :class:`hpo.studyfile.spec.StudySpec`.
    """
    from hpo.studyfile.parse import parse_study_spec

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
    return parse_study_spec(raw, name=name, path="<bench/storage_standin.py>")


def _quality(cfg) -> float:
    return _score(lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay,
                  drop_rate=cfg.model.drop_rate, optim=cfg.optim.name, batch_size=cfg.batch_size)


def _score(*, lr: float, weight_decay: float, drop_rate: float, optim: str,
           batch_size: int) -> float:
    """A smooth, deterministic score in (0, 1) of the searched settings (best near lr 3e-3)."""
    lr_term = math.exp(-0.5 * ((math.log10(lr) + 2.5) / 0.8) ** 2)
    wd_term = 1.0 - 0.1 * min(abs(math.log10(weight_decay) + 3.5) / 2.5, 1.0)
    drop_term = 1.0 - 0.3 * abs(drop_rate - 0.2)
    optim_term = {"adamw": 1.0, "adam": 0.95}.get(optim, 0.85)
    batch_term = {16: 0.97, 32: 1.0}.get(batch_size, 0.98)
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
        self._callback_s = self._callback_cpu_s = 0.0
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
                if on_epoch is not None and self._timed(on_epoch, epoch, metrics):
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
            self.own_s += time.perf_counter() - started - self._callback_s
            self.own_cpu_s += time.process_time() - cpu_started - self._callback_cpu_s

    def _timed(self, on_epoch, epoch: int, metrics: dict[str, float]) -> bool:
        # The Objective's report, pruning and storage writes happen in on_epoch: they are the
        # overhead being measured, so their time is kept out of the stand-in's own.
        t, c = time.perf_counter(), time.process_time()
        try:
            return bool(on_epoch(epoch, dict(metrics)))
        finally:
            self._callback_s += time.perf_counter() - t
            self._callback_cpu_s += time.process_time() - c


class BareObjective:
    """The benchmark's trial as a plain Optuna objective: Optuna's own cost, nothing of ours.

    The same space (through :func:`hpo.studyfile.space.suggest`, i.e. ``trial.suggest_*``), the
    same sleeps and scores per epoch, ``trial.report`` and ``trial.should_prune`` each epoch; no
    user attributes, no files, no config. ``own_s`` accumulates the sleeps.

    Args:
        spec: the study from :func:`bench_spec`.
        sleep_s: seconds per epoch.
        epochs: epochs per trial.
    """

    def __init__(self, spec, sleep_s: float, epochs: int) -> None:
        self.spec = spec
        self.sleep_s = sleep_s
        self.epochs = epochs
        self.own_s = 0.0
        self.own_cpu_s = 0.0

    def __call__(self, trial) -> float:
        """One trial: suggest, then per epoch sleep, report and maybe prune; returns f1."""
        import optuna

        from hpo.studyfile.space import suggest

        s = suggest(trial, self.spec)
        quality = _score(lr=s["optim.lr"], weight_decay=s["optim.weight_decay"],
                         drop_rate=s["model.drop_rate"], optim=s["optim.name"],
                         batch_size=s["batch_size"])
        epochs = self.epochs
        f1 = 0.0
        for epoch in range(1, epochs + 1):
            t = time.perf_counter()
            time.sleep(self.sleep_s)
            self.own_s += time.perf_counter() - t
            f1 = _epoch_metrics(quality, epoch, s["optim.lr"])["f1"]
            trial.report(f1, epoch)
            if epoch < epochs and trial.should_prune():
                raise optuna.TrialPruned()
        return f1
