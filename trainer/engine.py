"""Training one model: ``fit`` (with per-epoch callback, checkpoints and resume) and ``predict``.

The loop keeps the GPU busy: images come from the decoded uint8 cache as whole batches (one
memory-mapped gather per batch, per-image albumentations only for presets that need them),
travel as uint8 through pinned memory, and are converted, augmented and normalised on the
device in bf16 autocast with channels_last. The host synchronises every ``_SYNC_EVERY``
steps (NaN check) and once per epoch (metrics), never per step.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from torch import nn

from trainer.augment import Augmentation, apply_cpu, create_augmentation, create_mixer
from trainer.cache import build_cache
from trainer.config import TrainConfig, config_from_dict, config_to_dict, save_config
from trainer.errors import ConfigError, DataError, TrainerError
from trainer.layout import NUM_CLASSES, scan_train
from trainer.losses import create_loss_mix
from trainer.metrics import classification_metrics
from trainer.models import create_model, normalization
from trainer.split import split_frame

__all__ = [
    "FitResult",
    "TrainingDiverged",
    "fit",
    "predict",
    "load_checkpoint",
    "resolve_device",
    "prepare_data",
    "PreparedData",
]

log = logging.getLogger("trainer")
_SYNC_EVERY = 50
EpochCallback = Callable[[int, dict[str, float]], Any]


class TrainingDiverged(TrainerError):
    """The training loss became NaN or infinite."""


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


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` is the first CUDA device when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device is {name!r} but no CUDA device is visible; use device: auto "
                          "or cpu")
    return torch.device(name)


def _amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or precision == "fp32":
        return None
    if precision == "fp16":
        return torch.float16
    if precision == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def _epoch_seed(seed: int, epoch: int) -> int:
    # Each epoch's randomness is a function of (seed, epoch), so a resumed run draws exactly
    # what the uninterrupted run drew, however the previous process ended.
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


# ---------------------------------------------------------------------------------------------
# data


class _BatchSet(torch.utils.data.Dataset):
    """Whole batches from the decoded cache; the sampler hands out (seed, rows) pairs."""

    def __init__(self, cache_path: Path, labels: np.ndarray, aug: Augmentation | None) -> None:
        self.cache_path = cache_path
        self.labels = labels
        self.aug = aug
        self._images: np.ndarray | None = None

    def __getstate__(self) -> dict:  # workers reopen the memory map instead of pickling it
        return {**self.__dict__, "_images": None}

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, item: tuple[int, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        seed, rows = item
        if self._images is None:
            self._images = np.load(self.cache_path, mmap_mode="r")
        images = self._images[rows]  # rows are sorted: one forward pass over the file
        if self.aug is not None and self.aug.cpu is not None:
            images = apply_cpu(self.aug, images, seed)
        return torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(self.labels[rows])


class _EpochBatches(torch.utils.data.Sampler):
    """Batches of cache rows for one epoch, drawn from (seed, epoch)."""

    def __init__(self, rows: np.ndarray, labels: np.ndarray, *, batch_size: int, shuffle: bool,
                 balanced: bool = False, seed: int = 0) -> None:
        self.rows, self.labels = rows, labels
        self.batch_size, self.shuffle, self.balanced = batch_size, shuffle, balanced
        self.seed = seed
        self.epoch = 0
        # drop a ragged last batch when training (constant shapes, even batches for mixup)
        self.drop_last = shuffle and len(rows) >= batch_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.rows)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        n = len(self.rows)
        if self.balanced:
            counts = np.bincount(self.labels, minlength=NUM_CLASSES)
            weights = 1.0 / counts[self.labels]
            order = rng.choice(n, size=n, replace=True, p=weights / weights.sum())
        elif self.shuffle:
            order = rng.permutation(n)
        else:
            order = np.arange(n)
        for b in range(len(self)):
            pos = order[b * self.batch_size:(b + 1) * self.batch_size]
            yield int(rng.integers(2**31)), np.sort(self.rows[pos])


@dataclass
class PreparedData:
    """The split and decoded cache a run trains on (see :func:`prepare_data`)."""

    cache_path: Path
    labels: np.ndarray
    paths: list[str]
    train_rows: np.ndarray
    val_rows: np.ndarray
    class_counts: np.ndarray


def prepare_data(cfg: TrainConfig) -> PreparedData:
    """Scan the layout, split people, and build (or reuse) the decoded cache.

    Raises:
        DataError: bad layout, unreadable images, or an empty side of the split.
    """
    d = cfg.data
    frame = scan_train(d.train_dir, age_bins=d.age_bins, relabel_csv=d.relabel_csv)
    train, val = split_frame(frame, val_fraction=d.val_fraction, seed=d.split_seed, fold=d.fold,
                             n_folds=d.n_folds)
    ordered = list(train["path"]) + list(val["path"])  # one cache for both sides
    labels = np.concatenate([train["label"].to_numpy(), val["label"].to_numpy()]).astype(np.int64)
    info = build_cache(ordered, size=d.img_size, crop=d.crop, cache_dir=d.cache_dir)
    good = np.ones(len(ordered), dtype=bool)
    good[list(info.bad)] = False
    n_train = len(train)
    train_rows = np.flatnonzero(good[:n_train])
    val_rows = n_train + np.flatnonzero(good[n_train:])
    if len(train_rows) == 0 or len(val_rows) == 0:
        raise DataError("no readable images left on one side of the train/validation split")
    counts = np.bincount(labels[train_rows], minlength=NUM_CLASSES)
    return PreparedData(info.path, labels, ordered, train_rows, val_rows, counts)


def _loader(dataset: _BatchSet, sampler: _EpochBatches, workers: int, pin: bool):
    kwargs: dict[str, Any] = {}
    if workers > 0:
        # forkserver, not fork: a forked worker inherits locks held by other threads of the
        # trial process (Optuna's heartbeat, loggers) and can hang on them forever.
        kwargs = {"persistent_workers": True, "prefetch_factor": 4,
                  "multiprocessing_context": "forkserver"}
    return torch.utils.data.DataLoader(dataset, batch_size=None, sampler=sampler,
                                       num_workers=workers, pin_memory=pin, **kwargs)


def _workers(cfg: TrainConfig, device: torch.device) -> int:
    if cfg.data.num_workers is not None:
        return cfg.data.num_workers
    if device.type != "cuda":
        return 0  # on the CPU the model is the bottleneck; workers only cost start-up time
    return max(1, min(12, (os.cpu_count() or 2) - 2))


class _Preprocess:
    """uint8 NHWC batch on the host -> normalised float NCHW batch on the device."""

    def __init__(self, mean, std, device: torch.device, channels_last: bool) -> None:
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1)
        self.device = device
        self.channels_last = channels_last

    def __call__(self, x: torch.Tensor, aug: Augmentation | None = None) -> torch.Tensor:
        # NHWC permuted to NCHW *is* channels_last in memory: no copy on the host.
        x = x.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
        if aug is not None:
            x = aug.gpu(x)
        x = (x - self.mean) / self.std
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return x.contiguous(memory_format=fmt)


# ---------------------------------------------------------------------------------------------
# checkpoints


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)  # a crash mid-save never leaves a truncated checkpoint behind


def load_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint written by :func:`fit` with ``weights_only=True``.

    Raises:
        DataError: the file is missing or is not a trainer checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt or foreign file
        raise DataError(f"checkpoint {path} cannot be loaded ({type(exc).__name__}); "
                        "it is corrupt or was not written by the trainer") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise DataError(f"checkpoint {path} is not a trainer checkpoint (no model/config)")
    return ckpt


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(tuple(state["python"][:1]) + (tuple(state["python"][1]),)
                    + tuple(state["python"][2:]))
    np_state = state["numpy"]
    np.random.set_state((np_state[0], np.asarray(np_state[1], dtype=np.uint32), *np_state[2:]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------
# fit


def _build_scheduler(cfg: TrainConfig, optimizer, updates_per_epoch: int):
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


@torch.no_grad()
def _evaluate(model, loader, prep: _Preprocess, amp_dtype, device) -> tuple[np.ndarray, float]:
    model.eval()
    probs, loss_sum, n = [], torch.zeros((), device=device), 0
    for xb, yb in loader:
        x, y = prep(xb), yb.to(device, non_blocking=True)
        with _autocast(device, amp_dtype):
            logits = model(x)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        probs.append(torch.softmax(logits, dim=1))
        n += len(y)
    return torch.cat(probs).cpu().numpy(), float(loss_sum) / max(n, 1)


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


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
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    amp_dtype = _amp_dtype(cfg.precision, device)

    _seed_all(cfg.seed)
    model = create_model(cfg.model).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    mean, std = normalization(model)
    prep = _Preprocess(mean, std, device, cfg.channels_last)
    criterion = create_loss_mix(cfg.loss.weights, gamma=cfg.loss.gamma,
                                smoothing=cfg.loss.smoothing,
                                class_counts=data.class_counts).to(device)
    aug = create_augmentation(cfg.data.augmentation, cfg.data.img_size)
    mixer = create_mixer(mixup=cfg.data.mixup, cutmix=cfg.data.cutmix,
                         mixup_alpha=cfg.data.mixup_alpha, cutmix_alpha=cfg.data.cutmix_alpha)

    batch_size = min(cfg.batch_size, len(data.train_rows))
    train_sampler = _EpochBatches(data.train_rows, data.labels[data.train_rows],
                                  batch_size=batch_size, shuffle=True,
                                  balanced=cfg.data.balanced_sampler, seed=cfg.seed)
    val_sampler = _EpochBatches(data.val_rows, data.labels[data.val_rows],
                                batch_size=cfg.eval_batch_size, shuffle=False)
    workers = _workers(cfg, device)
    pin = device.type == "cuda"
    train_loader = _loader(_BatchSet(data.cache_path, data.labels, aug), train_sampler,
                           workers, pin)
    val_loader = _loader(_BatchSet(data.cache_path, data.labels, None), val_sampler,
                         min(workers, 2), pin)

    optimizer = create_optimizer_v2(model, opt=cfg.optim.name.lower(), lr=cfg.optim.lr,
                                    weight_decay=cfg.optim.weight_decay,
                                    momentum=cfg.optim.momentum)
    accum = cfg.optim.accum_steps
    updates_per_epoch = math.ceil(len(train_sampler) / accum)
    scheduler = _build_scheduler(cfg, optimizer, updates_per_epoch)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None

    history: list[dict[str, float]] = []
    best_f1, best_epoch, bad_epochs, num_updates = -1.0, 0, 0, 0
    best_probs: np.ndarray | None = None
    first_epoch = 1
    if resume is not None:
        ckpt = load_checkpoint(resume, map_location=device)
        _check_resumable(cfg, ckpt, resume)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scheduler is not None and ckpt.get("scheduler"):
            scheduler.load_state_dict(ckpt["scheduler"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        _set_rng_state(ckpt["rng"])
        history = list(ckpt["history"])
        best_f1, best_epoch = ckpt["best_f1"], ckpt["best_epoch"]
        bad_epochs, num_updates = ckpt["bad_epochs"], ckpt["num_updates"]
        best_probs = ckpt["best_val_probs"].numpy() if ckpt.get("best_val_probs") is not None \
            else None
        first_epoch = ckpt["epoch"] + 1
        log.info("resuming from %s at epoch %d", resume, first_epoch)
        if best_probs is not None and best_epoch >= 1:
            # the best checkpoint may live in another run's folder (a retried trial)
            src = Path(resume).parent
            if src.resolve() != out.resolve() and (src / "best.pt").is_file():
                _atomic_save(torch.load(src / "best.pt", weights_only=True), out / "best.pt")
                np.save(out / "val_probs.npy", best_probs)

    stopped_early = False
    train_images, train_seconds = 0, 0.0
    val_labels = data.labels[data.val_rows]
    for epoch in range(first_epoch, cfg.epochs + 1):
        _seed_all(_epoch_seed(cfg.seed, epoch))
        train_sampler.set_epoch(epoch)
        model.train()
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        seen = 0
        n_steps = len(train_sampler)
        for step, (xb, yb) in enumerate(train_loader):
            x = prep(xb, aug)
            y = yb.to(device, non_blocking=True)
            target = y
            if mixer is not None:
                x, target = mixer(x, y)
            with _autocast(device, amp_dtype):
                logits = model(x)
            loss = criterion(logits, target)
            scaled = loss / accum
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
            if (step + 1) % accum == 0 or step + 1 == n_steps:
                if scaler is not None:
                    scaler.unscale_(optimizer)
                if cfg.optim.clip_grad is not None:
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip_grad)
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                num_updates += 1
                if scheduler is not None:
                    scheduler.step_update(num_updates)
            loss_sum += loss.detach()
            seen += len(y)
            if (step + 1) % _SYNC_EVERY == 0 and not torch.isfinite(loss_sum):
                raise _diverged(epoch, cfg)
        train_loss = float(loss_sum) / max(n_steps, 1)  # the epoch's one sync for training
        if not math.isfinite(train_loss):
            raise _diverged(epoch, cfg)
        train_seconds += time.perf_counter() - t0
        train_images += seen
        probs, val_loss = _evaluate(model, val_loader, prep, amp_dtype, device)
        metrics = {"epoch": epoch, **classification_metrics(probs, val_labels),
                   "val_loss": val_loss, "train_loss": train_loss,
                   "lr": optimizer.param_groups[0]["lr"],
                   "images_per_second": seen / max(time.perf_counter() - t0, 1e-9)}
        history.append(metrics)
        improved = metrics["f1"] > best_f1
        if improved:
            best_f1, best_epoch, bad_epochs, best_probs = metrics["f1"], epoch, 0, probs
            _atomic_save(_checkpoint(model, cfg, epoch, history, mean, std, best=True),
                         out / "best.pt")
            np.save(out / "val_probs.npy", probs)
        else:
            bad_epochs += 1
        state = _checkpoint(model, cfg, epoch, history, mean, std, best=False)
        state.update({
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "scaler": scaler.state_dict() if scaler is not None else None,
            "rng": _rng_state(), "best_f1": best_f1, "best_epoch": best_epoch,
            "bad_epochs": bad_epochs, "num_updates": num_updates,
            "best_val_probs": torch.from_numpy(best_probs) if best_probs is not None else None,
        })
        _atomic_save(state, out / "last.pt")
        log.info("epoch %d/%d f1 %.4f acc %.4f loss %.4f", epoch, cfg.epochs, metrics["f1"],
                 metrics["accuracy"], train_loss)
        if on_epoch is not None and on_epoch(epoch, dict(metrics)):
            stopped_early = True
            break
        if cfg.early_stop_patience is not None and bad_epochs >= cfg.early_stop_patience:
            log.info("early stop: no better f1 for %d epochs", bad_epochs)
            stopped_early = True
            break

    if best_probs is None:
        raise TrainerError("no epoch was trained: the resumed checkpoint had already finished "
                           f"all {cfg.epochs} epochs and holds no validation probabilities")
    return FitResult(
        history=history, best_epoch=best_epoch,
        best_metrics=next(h for h in history if h["epoch"] == best_epoch),
        val_probs=best_probs, val_labels=val_labels,
        val_paths=[data.paths[i] for i in data.val_rows], output_dir=out,
        best_checkpoint=out / "best.pt", last_checkpoint=out / "last.pt",
        seconds=time.perf_counter() - start_time,
        images_per_second=train_images / train_seconds if train_seconds else 0.0,
        device=_device_name(device), stopped_early=stopped_early,
    )


def _diverged(epoch: int, cfg: TrainConfig) -> TrainingDiverged:
    return TrainingDiverged(f"training loss became NaN or infinite in epoch {epoch} "
                            f"(optim.lr {cfg.optim.lr:g}); lower optim.lr or set "
                            "optim.clip_grad")


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


def _checkpoint(model, cfg: TrainConfig, epoch: int, history, mean, std, *, best: bool) -> dict:
    return {
        "model": model.state_dict(), "config": config_to_dict(cfg), "epoch": epoch,
        "history": list(history), "mean": list(mean), "std": list(std), "best": best,
        "num_classes": NUM_CLASSES,
    }


def _check_resumable(cfg: TrainConfig, ckpt: dict, path) -> None:
    saved = config_from_dict(ckpt["config"])
    for key in ("model", "data", "loss", "optim"):
        if getattr(saved, key) != getattr(cfg, key):
            raise ConfigError(f"cannot resume from {path}: its {key} settings differ from this "
                              "run's; resume with the config saved beside it (config.yaml)")
    if "optimizer" not in ckpt:
        raise ConfigError(f"cannot resume from {path}: it is a best checkpoint; resume from "
                          "last.pt")


# ---------------------------------------------------------------------------------------------
# predict


def _load_model(ckpt: dict, device: torch.device) -> tuple[nn.Module, TrainConfig]:
    cfg = config_from_dict(ckpt["config"])
    model_cfg = type(cfg.model)(**{**config_to_dict(cfg)["model"], "pretrained": False,
                                   "pretrained_file": None})
    model = create_model(model_cfg)
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), cfg


@torch.no_grad()
def predict(
    checkpoint: str | Path | dict,
    paths: Sequence[str],
    *,
    tta_flip: bool = False,
    batch_size: int = 256,
    device: str = "auto",
    cache_dir: str | None = None,
) -> np.ndarray:
    """Class probabilities (N, 18) of a trained model for a list of images.

    Each image is decoded, cropped and resized exactly as the model's training images were
    (settings from the checkpoint's config), and normalised with its mean/std.

    Args:
        checkpoint: a ``best.pt``/``last.pt`` path, or an already loaded checkpoint dict.
        paths: image files.
        tta_flip: average with the prediction of the horizontally flipped image.
        batch_size: images per forward pass.
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        cache_dir: where the decoded images are cached (default: the trainer's cache).

    Raises:
        DataError: a missing or unreadable image, or an unusable checkpoint.
    """
    dev = resolve_device(device)
    ckpt = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)
    model, cfg = _load_model(ckpt, dev)
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise DataError(f"image {missing[0]} does not exist ({len(missing)} missing)")
    info = build_cache(list(paths), size=cfg.data.img_size, crop=cfg.data.crop,
                       cache_dir=cache_dir or cfg.data.cache_dir)
    if info.bad:
        raise DataError(f"image {paths[info.bad[0]]} cannot be read ({len(info.bad)} "
                        "unreadable); every image needs a prediction, so replace it")
    prep = _Preprocess(ckpt["mean"], ckpt["std"], dev, cfg.channels_last)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    amp_dtype = _amp_dtype(cfg.precision, dev)
    out = []
    for start in range(0, len(paths), batch_size):
        xb = torch.from_numpy(np.array(info.images[start:start + batch_size]))
        if dev.type == "cuda":
            xb = xb.pin_memory()
        x = prep(xb)
        with _autocast(dev, amp_dtype):
            p = torch.softmax(model(x).float(), dim=1)
            if tta_flip:
                p = (p + torch.softmax(model(x.flip(3)).float(), dim=1)) / 2
        out.append(p)
    return torch.cat(out).cpu().numpy()
