"""Training one model: ``fit``, with a per-epoch callback, checkpoints and resume.

The loop keeps the GPU busy: batches arrive as uint8 (see :mod:`trainer.data`) and are
converted, augmented and normalised on the device in bf16 autocast with channels_last. The host
synchronises every ``_SYNC_EVERY`` steps (NaN check) and once per epoch (metrics), never per
step.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainer.augment import Augmentation, create_augmentation, create_mixer
from trainer.checkpoint import (
    atomic_save,
    check_resumable,
    epoch_seed,
    load_checkpoint,
    model_checkpoint,
    seed_all,
)
from trainer.config import TrainConfig, save_config
from trainer.data import Loaders, PreparedData, Preprocess, make_loaders, prepare_data
from trainer.device import amp_dtype, autocast, configure_backends, device_name, resolve_device
from trainer.errors import TrainerError, TrainingDiverged
from trainer.losses import create_loss_mix
from trainer.metrics import classification_metrics
from trainer.models import create_model, normalization
from trainer.state import RunState

__all__ = ["EpochCallback", "FitResult", "fit"]

log = logging.getLogger("trainer")
_SYNC_EVERY = 50
EpochCallback = Callable[[int, dict[str, float]], Any]


@dataclass
class FitResult:
    """What :func:`fit` returns.

    ``history`` holds one dict per epoch (``epoch`` counts from 1); ``val_probs`` are the
    validation class probabilities of the best epoch, rows matching ``val_paths`` /
    ``val_labels`` (the input for ensembling).
    """

    history: list[dict[str, float]]
    best_epoch: int
    best_metrics: dict[str, float]
    val_probs: np.ndarray
    val_labels: np.ndarray
    val_paths: list[str]
    output_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    seconds: float
    images_per_second: float
    device: str
    stopped_early: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Run:
    """The parts of a run that stay fixed from its first epoch to its last."""

    cfg: TrainConfig
    out: Path
    device: torch.device
    amp_dtype: torch.dtype | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    prep: Preprocess
    criterion: nn.Module
    aug: Augmentation | None
    mixer: Callable | None
    loaders: Loaders
    val_labels: np.ndarray


def _build_run(cfg: TrainConfig, data: PreparedData, device: torch.device,
               out: Path) -> tuple[_Run, nn.Module]:
    configure_backends(device)
    dtype = amp_dtype(cfg.precision, device)
    seed_all(cfg.seed)  # the model's initial weights come from the run's seed
    model = create_model(cfg.model).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    mean, std = normalization(model)
    criterion = create_loss_mix(cfg.loss.weights, gamma=cfg.loss.gamma,
                                smoothing=cfg.loss.smoothing,
                                class_counts=data.class_counts).to(device)
    aug = create_augmentation(cfg.data.augmentation, cfg.data.img_size)
    mixer = create_mixer(mixup=cfg.data.mixup, cutmix=cfg.data.cutmix,
                         mixup_alpha=cfg.data.mixup_alpha, cutmix_alpha=cfg.data.cutmix_alpha)
    run = _Run(cfg=cfg, out=out, device=device, amp_dtype=dtype, mean=mean, std=std,
               prep=Preprocess(mean, std, device, cfg.channels_last), criterion=criterion,
               aug=aug, mixer=mixer, loaders=make_loaders(cfg, data, aug, device),
               val_labels=data.labels[data.val_rows])
    return run, model


def _start_state(run: _Run, model: nn.Module, resume: str | Path | None) -> RunState:
    cfg = run.cfg
    updates = math.ceil(len(run.loaders.train_sampler) / cfg.optim.accum_steps)
    if resume is None:
        return RunState.create(cfg, model, updates_per_epoch=updates, amp_dtype=run.amp_dtype)
    ckpt = load_checkpoint(resume, map_location=run.device)
    check_resumable(cfg, ckpt, resume)
    state = RunState.from_checkpoint(ckpt, cfg, model, updates_per_epoch=updates,
                                     amp_dtype=run.amp_dtype)
    log.info("resuming from %s at epoch %d", resume, state.first_epoch)
    if state.best_probs is not None and state.best_epoch >= 1:
        # the best checkpoint may live in another run's folder (a retried trial)
        src = Path(resume).parent
        if src.resolve() != run.out.resolve() and (src / "best.pt").is_file():
            atomic_save(torch.load(src / "best.pt", weights_only=True), run.out / "best.pt")
            np.save(run.out / "val_probs.npy", state.best_probs)
    return state


def _train_epoch(run: _Run, state: RunState, *, epoch: int) -> tuple[float, int]:
    """One pass over the training batches; returns the mean loss and the images seen."""
    cfg, device = run.cfg, run.device
    seed_all(epoch_seed(cfg.seed, epoch))
    run.loaders.train_sampler.set_epoch(epoch)
    state.model.train()
    loss_sum = torch.zeros((), device=device)
    seen, n_steps, accum = 0, len(run.loaders.train_sampler), cfg.optim.accum_steps
    for step, (xb, yb) in enumerate(run.loaders.train):
        x = run.prep(xb, run.aug)
        y = yb.to(device, non_blocking=True)
        target = y
        if run.mixer is not None:
            x, target = run.mixer(x, y)
        with autocast(device, run.amp_dtype):
            logits = state.model(x)
        loss = run.criterion(logits, target)
        scaled = loss / accum
        (state.scaler.scale(scaled) if state.scaler is not None else scaled).backward()
        if (step + 1) % accum == 0 or step + 1 == n_steps:
            state.step(cfg.optim.clip_grad)
        loss_sum += loss.detach()
        seen += len(y)
        if (step + 1) % _SYNC_EVERY == 0 and not torch.isfinite(loss_sum):
            raise _diverged(epoch, cfg)
    train_loss = float(loss_sum) / max(n_steps, 1)  # the epoch's one sync for training
    if not math.isfinite(train_loss):
        raise _diverged(epoch, cfg)
    return train_loss, seen


@torch.no_grad()
def _validate(run: _Run, model: nn.Module) -> tuple[np.ndarray, float]:
    """Class probabilities of every validation image and the mean cross-entropy."""
    model.eval()
    probs, loss_sum, n = [], torch.zeros((), device=run.device), 0
    for xb, yb in run.loaders.val:
        x, y = run.prep(xb), yb.to(run.device, non_blocking=True)
        with autocast(run.device, run.amp_dtype):
            logits = model(x)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        probs.append(torch.softmax(logits, dim=1))
        n += len(y)
    return torch.cat(probs).cpu().numpy(), float(loss_sum) / max(n, 1)


def _epoch_metrics(run: _Run, state: RunState, *, epoch: int, train_loss: float,
                   images_per_second: float) -> tuple[dict[str, float], np.ndarray | None]:
    """The epoch's metrics and validation probabilities (None: ``data.holdout`` false)."""
    cfg = run.cfg
    rest = {"train_loss": train_loss, "lr": state.optimizer.param_groups[0]["lr"],
            "images_per_second": images_per_second}
    if run.val_labels.size == 0:  # every person trained: nothing to validate on
        log.info("epoch %d/%d loss %.4f (no validation people)", epoch, cfg.epochs, train_loss)
        return {"epoch": epoch, **rest}, None
    probs, val_loss = _validate(run, state.model)
    metrics = {"epoch": epoch, **classification_metrics(probs, run.val_labels),
               "val_loss": val_loss, **rest}
    log.info("epoch %d/%d f1 %.4f acc %.4f loss %.4f", epoch, cfg.epochs, metrics["f1"],
             metrics["accuracy"], train_loss)
    return metrics, probs


def _save_epoch(run: _Run, state: RunState, *, epoch: int) -> None:
    """``best.pt`` and ``val_probs.npy`` when ``epoch`` is the best so far; ``last.pt`` always."""
    if state.best_epoch == epoch:
        best = model_checkpoint(state.model, run.cfg, epoch=epoch, history=state.history,
                                mean=run.mean, std=run.std, best=True)
        atomic_save(best, run.out / "best.pt")
        np.save(run.out / "val_probs.npy", state.best_probs)
    last = state.to_checkpoint(run.cfg, epoch=epoch, mean=run.mean, std=run.std)
    atomic_save(last, run.out / "last.pt")


def _should_stop(cfg: TrainConfig, state: RunState, on_epoch: EpochCallback | None,
                 metrics: dict[str, float]) -> bool:
    if on_epoch is not None and on_epoch(int(metrics["epoch"]), dict(metrics)):
        return True
    if cfg.early_stop_patience is not None and state.bad_epochs >= cfg.early_stop_patience:
        log.info("early stop: no better f1 for %d epochs", state.bad_epochs)
        return True
    return False


def fit(
    cfg: TrainConfig,
    *,
    on_epoch: EpochCallback | None = None,
    resume: str | Path | None = None,
    data: PreparedData | None = None,
) -> FitResult:
    """Train one model as ``cfg`` says, validating on held-out people every epoch.

    Each epoch writes ``last.pt`` (model, optimizer, scheduler, scaler, RNG state, epoch,
    history) to ``cfg.output_dir`` and, when validation macro-F1 improves, ``best.pt`` and
    ``val_probs.npy``; ``config.yaml`` is written at the start.

    Args:
        cfg: the run's configuration.
        on_epoch: called after each epoch's checkpoint as ``on_epoch(epoch, metrics)``
            (epochs count from 1); a truthy return value stops training. Exceptions it raises
            (e.g. a pruning signal) propagate to the caller.
        resume: a ``last.pt`` to continue from; the run then ends as an uninterrupted one would.
        data: an already prepared split and cache (``prepare_data(cfg)``), to skip scanning.

    Returns:
        A :class:`FitResult` with the history, the best epoch and its validation probabilities.

    Raises:
        ConfigError, DataError: bad settings or data.
        TrainingDiverged: the loss became NaN or infinite.
    """
    start_time = time.perf_counter()
    device = resolve_device(cfg.device)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    data = data or prepare_data(cfg)
    run, model = _build_run(cfg, data, device, out)
    state = _start_state(run, model, resume)
    stopped_early, train_images, train_seconds = False, 0, 0.0
    for epoch in range(state.first_epoch, cfg.epochs + 1):
        t0 = time.perf_counter()
        train_loss, seen = _train_epoch(run, state, epoch=epoch)
        train_seconds += time.perf_counter() - t0
        train_images += seen
        metrics, probs = _epoch_metrics(run, state, epoch=epoch, train_loss=train_loss,
                                        images_per_second=seen / max(time.perf_counter() - t0,
                                                                     1e-9))
        state.record(metrics, probs)
        _save_epoch(run, state, epoch=epoch)
        if _should_stop(cfg, state, on_epoch, metrics):
            stopped_early = True
            break
    return _result(run, state, data, stopped_early=stopped_early,
                   seconds=time.perf_counter() - start_time,
                   images_per_second=train_images / train_seconds if train_seconds else 0.0)


def _result(run: _Run, state: RunState, data: PreparedData, *, stopped_early: bool,
            seconds: float, images_per_second: float) -> FitResult:
    if state.best_probs is None:
        raise TrainerError("no epoch was trained: the resumed checkpoint had already finished "
                           f"all {run.cfg.epochs} epochs and holds no validation probabilities")
    out = run.out
    return FitResult(
        history=state.history, best_epoch=state.best_epoch,
        best_metrics=next(h for h in state.history if h["epoch"] == state.best_epoch),
        val_probs=state.best_probs, val_labels=run.val_labels,
        val_paths=[data.paths[i] for i in data.val_rows], output_dir=out,
        best_checkpoint=out / "best.pt", last_checkpoint=out / "last.pt", seconds=seconds,
        images_per_second=images_per_second, device=device_name(run.device),
        stopped_early=stopped_early,
    )


def _diverged(epoch: int, cfg: TrainConfig) -> TrainingDiverged:
    return TrainingDiverged(f"training loss became NaN or infinite in epoch {epoch} "
                            f"(optim.lr {cfg.optim.lr:g}); lower optim.lr or set "
                            "optim.clip_grad")
