"""From the layout to batches on the device: the split and decoded cache, and their loaders.

Images come from the decoded uint8 cache as whole batches (one memory-mapped gather per batch,
per-image albumentations only for presets that need them), travel as uint8 through pinned
memory, and are converted, augmented and normalised on the device.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from trainer.augment import Augmentation, apply_cpu
from trainer.cache import build_cache
from trainer.config import TrainConfig
from trainer.errors import DataError
from trainer.layout import NUM_CLASSES, scan_train
from trainer.split import split_frame

__all__ = [
    "BatchSet",
    "EpochBatches",
    "Loaders",
    "PreparedData",
    "Preprocess",
    "data_key",
    "loader_workers",
    "make_loader",
    "make_loaders",
    "prepare_data",
]


class BatchSet(torch.utils.data.Dataset):
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


class EpochBatches(torch.utils.data.Sampler):
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
    """The split and decoded cache a run trains on (see :func:`prepare_data`).

    ``labels`` holds one label per cached image: the training label (the run's
    ``data.age_bins``) at ``train_rows`` and the competition's label (:data:`COMPETITION_AGE_BINS`
    on the real age) at ``val_rows``, so every validation metric is the competition's.
    ``class_counts`` counts the training labels of the training rows.
    """

    cache_path: Path
    labels: np.ndarray
    paths: list[str]
    train_rows: np.ndarray
    val_rows: np.ndarray
    class_counts: np.ndarray


def data_key(cfg: TrainConfig) -> tuple:
    """The settings that decide :func:`prepare_data`'s result.

    Two configs with equal keys can share one :class:`PreparedData` (e.g. the trials of a study
    that search only model and optimiser settings). ``age_bins`` is part of the key (it decides
    the training labels) but not of the decoded cache's, nor of the split.

    Args:
        cfg: a run's configuration.

    Returns:
        A hashable tuple of ``cfg.data``'s train_dir, img_size, crop, val_fraction, fold,
        n_folds, holdout, split_seed, age_bins, relabel_csv and cache_dir.
    """
    d = cfg.data
    return (d.train_dir, d.img_size, d.crop, d.val_fraction, d.fold, d.n_folds, d.holdout,
            d.split_seed, d.age_bins, d.relabel_csv, d.cache_dir)


def prepare_data(cfg: TrainConfig) -> PreparedData:
    """Scan the layout, split people, and build (or reuse) the decoded cache.

    The split and the validation labels follow the competition's age classes whatever
    ``cfg.data.age_bins`` is; only the training rows' labels (and class counts) use it.

    Args:
        cfg: the run's configuration; only the settings in :func:`data_key` matter.

    Returns:
        The cache, every image's label (training labels for the training rows, the
        competition's for the validation rows) and path, and the train and validation rows.

    Raises:
        DataError: bad layout, unreadable images, or an empty side of the split.
    """
    d = cfg.data
    frame = scan_train(d.train_dir, age_bins=d.age_bins, relabel_csv=d.relabel_csv)
    train, val = split_frame(frame, val_fraction=d.val_fraction, seed=d.split_seed, fold=d.fold,
                             n_folds=d.n_folds)
    if not d.holdout:  # every person trains, nobody validates
        train, val = pd.concat([train, val], ignore_index=True), val.iloc[:0]
    # One decoded cache per dataset: its images in the layout's order whatever the split, so
    # the search's split, every fold of a refit and a full model share it (k folds at 224 px
    # were k copies of the images). The rows keep the split's order.
    ordered = list(frame["path"])
    row_of = {path: i for i, path in enumerate(ordered)}
    train_at = np.array([row_of[p] for p in train["path"]], dtype=np.int64)
    val_at = np.array([row_of[p] for p in val["path"]], dtype=np.int64)
    labels = np.zeros(len(ordered), dtype=np.int64)
    labels[train_at] = train["label"].to_numpy()
    labels[val_at] = val["competition_label"].to_numpy()
    info = build_cache(ordered, size=d.img_size, crop=d.crop, cache_dir=d.cache_dir)
    good = np.ones(len(ordered), dtype=bool)
    good[list(info.bad)] = False
    train_rows, val_rows = train_at[good[train_at]], val_at[good[val_at]]
    if len(train_rows) == 0 or (d.holdout and len(val_rows) == 0):
        raise DataError("no readable images left on one side of the train/validation split")
    counts = np.bincount(labels[train_rows], minlength=NUM_CLASSES)
    return PreparedData(info.path, labels, ordered, train_rows, val_rows, counts)


def make_loader(dataset: BatchSet, sampler: EpochBatches, workers: int,
                pin: bool) -> torch.utils.data.DataLoader:
    """A loader of whole batches (the sampler batches, so the loader does not)."""
    kwargs: dict[str, Any] = {}
    if workers > 0:
        # forkserver, not fork: a forked worker inherits locks held by other threads of the
        # trial process (Optuna's heartbeat, loggers) and can hang on them forever.
        kwargs = {"persistent_workers": True, "prefetch_factor": 4,
                  "multiprocessing_context": "forkserver"}
    return torch.utils.data.DataLoader(dataset, batch_size=None, sampler=sampler,
                                       num_workers=workers, pin_memory=pin, **kwargs)


def loader_workers(cfg: TrainConfig, device: torch.device) -> int:
    """Loader processes: the configured number, else none on the CPU and a few per GPU.

    On a GPU, the process's thread budget bounds them (``torch.get_num_threads()``: every core
    when alone, a worker's share when ``hpo`` runs several on one machine), less one for the
    training loop itself.
    """
    if cfg.data.num_workers is not None:
        return cfg.data.num_workers
    if device.type != "cuda":
        return 0  # on the CPU the model is the bottleneck; workers only cost start-up time
    return max(1, min(12, torch.get_num_threads() - 1))


@dataclass
class Loaders:
    """A run's training sampler (its epoch is set before each epoch) and both loaders."""

    train_sampler: EpochBatches
    train: torch.utils.data.DataLoader
    val: torch.utils.data.DataLoader


def make_loaders(cfg: TrainConfig, data: PreparedData, aug: Augmentation | None,
                 device: torch.device) -> Loaders:
    """The training loader (shuffled or class-balanced, augmented) and the validation loader.

    Args:
        cfg: the run's configuration (batch sizes, sampler, workers, seed).
        data: the prepared split and cache.
        aug: the training augmentation, or ``None``.
        device: where the batches go (pinned memory for CUDA).

    Returns:
        The :class:`Loaders`.
    """
    batch_size = min(cfg.batch_size, len(data.train_rows))
    train_sampler = EpochBatches(data.train_rows, data.labels[data.train_rows],
                                 batch_size=batch_size, shuffle=True,
                                 balanced=cfg.data.balanced_sampler, seed=cfg.seed)
    val_sampler = EpochBatches(data.val_rows, data.labels[data.val_rows],
                               batch_size=cfg.eval_batch_size, shuffle=False)
    workers = loader_workers(cfg, device)
    pin = device.type == "cuda"
    train = make_loader(BatchSet(data.cache_path, data.labels, aug), train_sampler, workers, pin)
    val = make_loader(BatchSet(data.cache_path, data.labels, None), val_sampler,
                      min(workers, 2), pin)
    return Loaders(train_sampler, train, val)


class Preprocess:
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
