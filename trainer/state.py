"""What a run carries from one epoch to the next, and how it goes into and out of ``last.pt``."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from torch import nn

from trainer.checkpoint import model_checkpoint, rng_state, set_rng_state
from trainer.config import TrainConfig
from trainer.layout import NUM_CLASSES

__all__ = ["RunState", "build_scheduler"]


def build_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer, updates_per_epoch: int):
    """timm's scheduler for ``cfg.optim``, stepped per update; ``None`` for ``scheduler: none``."""
    o = cfg.optim
    if o.scheduler == "none":
        return None
    sched, _ = create_scheduler_v2(
        optimizer, sched=o.scheduler, num_epochs=cfg.epochs, decay_epochs=o.decay_epochs,
        decay_rate=o.decay_rate, min_lr=o.min_lr, warmup_lr=o.warmup_lr,
        warmup_epochs=o.warmup_epochs, step_on_epochs=False,
        updates_per_epoch=updates_per_epoch,
    )
    return sched


@dataclass
class RunState:
    """The model, its optimiser and what the run has learnt of its epochs so far.

    ``first_epoch`` is the epoch the run (re)starts at; ``best_probs`` are the validation
    probabilities of ``best_epoch``; ``bad_epochs`` counts epochs since the last improvement.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any = None
    scaler: torch.amp.GradScaler | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    best_f1: float = -1.0
    best_epoch: int = 0
    best_probs: np.ndarray | None = None
    bad_epochs: int = 0
    num_updates: int = 0
    first_epoch: int = 1

    @classmethod
    def create(cls, cfg: TrainConfig, model: nn.Module, *, updates_per_epoch: int,
               amp_dtype: torch.dtype | None) -> RunState:
        """A fresh run: timm's optimiser and scheduler for ``model``, a scaler for fp16.

        Args:
            cfg: the run's configuration.
            model: the model, already on its device.
            updates_per_epoch: optimiser steps per epoch (the scheduler steps per update).
            amp_dtype: the autocast dtype; fp16 needs a gradient scaler.

        Returns:
            The state before the first epoch.
        """
        o = cfg.optim
        optimizer = create_optimizer_v2(model, opt=o.name.lower(), lr=o.lr,
                                        weight_decay=o.weight_decay, momentum=o.momentum)
        scheduler = build_scheduler(cfg, optimizer, updates_per_epoch)
        scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
        return cls(model, optimizer, scheduler, scaler)

    @classmethod
    def from_checkpoint(cls, ckpt: dict, cfg: TrainConfig, model: nn.Module, *,
                        updates_per_epoch: int, amp_dtype: torch.dtype | None) -> RunState:
        """The state a ``last.pt`` saved, with the global random state restored too.

        Args:
            ckpt: a loaded ``last.pt`` (checked with :func:`trainer.checkpoint.check_resumable`).
            cfg, model, updates_per_epoch, amp_dtype: as for :meth:`create`.

        Returns:
            The state after the checkpoint's epoch; ``first_epoch`` is the one after it.
        """
        state = cls.create(cfg, model, updates_per_epoch=updates_per_epoch, amp_dtype=amp_dtype)
        state.model.load_state_dict(ckpt["model"])
        state.optimizer.load_state_dict(ckpt["optimizer"])
        if state.scheduler is not None and ckpt.get("scheduler"):
            state.scheduler.load_state_dict(ckpt["scheduler"])
        if state.scaler is not None and ckpt.get("scaler"):
            state.scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        state.history = list(ckpt["history"])
        state.best_f1, state.best_epoch = ckpt["best_f1"], ckpt["best_epoch"]
        state.bad_epochs, state.num_updates = ckpt["bad_epochs"], ckpt["num_updates"]
        probs = ckpt.get("best_val_probs")
        state.best_probs = probs.numpy() if probs is not None else None
        state.first_epoch = ckpt["epoch"] + 1
        return state

    def to_checkpoint(self, cfg: TrainConfig, *, epoch: int, mean, std) -> dict:
        """The ``last.pt`` of ``epoch``: everything :meth:`from_checkpoint` reads.

        Args:
            cfg: the run's configuration (saved in the checkpoint).
            epoch: the epoch just finished.
            mean, std: the model's input normalisation.

        Returns:
            A dict ``torch.load(weights_only=True)`` can read back.
        """
        ckpt = model_checkpoint(self.model, cfg, epoch=epoch, history=self.history, mean=mean,
                                std=std, best=False)
        ckpt.update({
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": rng_state(), "best_f1": self.best_f1, "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs, "num_updates": self.num_updates,
            "best_val_probs": (torch.from_numpy(self.best_probs)
                               if self.best_probs is not None else None),
        })
        return ckpt

    def step(self, clip_grad: float | None) -> None:
        """One optimiser update from the accumulated gradients, then the scheduler's step."""
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if clip_grad is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), clip_grad)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.num_updates += 1
        if self.scheduler is not None:
            self.scheduler.step_update(self.num_updates)

    def record(self, metrics: dict[str, float], probs: np.ndarray | None) -> bool:
        """Add an epoch's metrics to the history; returns whether its F1 is the best so far.

        Without validation (``probs`` None: ``data.holdout`` false) every epoch is the best:
        the model is the last epoch's, and its validation probabilities are empty.
        """
        self.history.append(metrics)
        if probs is None:
            self.best_epoch, self.bad_epochs = int(metrics["epoch"]), 0
            self.best_probs = np.zeros((0, NUM_CLASSES), dtype=np.float32)
            return True
        if metrics["f1"] > self.best_f1:
            self.best_f1, self.best_epoch = metrics["f1"], int(metrics["epoch"])
            self.bad_epochs, self.best_probs = 0, probs
            return True
        self.bad_epochs += 1
        return False
