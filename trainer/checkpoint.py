"""Checkpoint files and the random state a resumed run needs to continue bit for bit.

A checkpoint is a plain dict of tensors, lists and numbers, saved atomically and loaded with
``weights_only=True`` (no pickled code runs on load). ``best.pt`` holds the model and its
config; ``last.pt`` adds what training needs to continue (see :class:`trainer.state.RunState`).
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from trainer.config import TrainConfig, config_from_dict, config_to_dict
from trainer.errors import ConfigError, DataError
from trainer.layout import NUM_CLASSES

__all__ = [
    "atomic_save",
    "check_resumable",
    "epoch_seed",
    "load_checkpoint",
    "model_checkpoint",
    "rng_state",
    "seed_all",
    "set_rng_state",
]


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` through a temporary file, so ``path`` is never left half written.

    Raises:
        OSError: the file cannot be written (a read-only or full disk), with the real errno:
            torch reports both as a ``RuntimeError`` from its zip writer that names neither.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(obj, tmp)
    except RuntimeError as exc:
        _discard(tmp)
        cause = _write_cause(tmp) if _writer_failed(exc) else None
        if cause is None:
            raise
        raise OSError(cause.errno, f"{cause.strerror} (torch.save could not write the "
                      "checkpoint)", str(path)) from None
    except OSError:
        _discard(tmp)
        raise
    os.replace(tmp, path)  # a crash mid-save never leaves a truncated checkpoint behind


def _discard(tmp: Path) -> None:
    try:
        tmp.unlink(missing_ok=True)
    except OSError:
        pass  # a read-only folder holds no half-written file to remove


def _writer_failed(exc: RuntimeError) -> bool:
    """torch's zip writer could not write (a read-only or full disk looks like this)."""
    text = str(exc)
    return any(s in text for s in ("unexpected pos", "PytorchStreamWriter failed",
                                   "file write failed", "inline_container"))


def _write_cause(tmp: Path) -> OSError | None:
    """Why the folder takes no file: a plain write of the same file, to read its errno."""
    try:
        with open(tmp, "wb") as f:
            f.write(bytes(1 << 20))
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        return err
    finally:
        _discard(tmp)
    return None


def load_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint written by :func:`trainer.fit` with ``weights_only=True``.

    Args:
        path: a ``best.pt`` or ``last.pt``.
        map_location: where its tensors go.

    Returns:
        The checkpoint dict (at least ``model`` and ``config``).

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


def model_checkpoint(model: nn.Module, cfg: TrainConfig, *, epoch: int,
                     history: list[dict[str, float]], mean, std, best: bool) -> dict:
    """What every checkpoint holds: the weights, the config and how to preprocess images."""
    return {
        "model": model.state_dict(), "config": config_to_dict(cfg), "epoch": epoch,
        "history": list(history), "mean": list(mean), "std": list(std), "best": best,
        "num_classes": NUM_CLASSES,
    }


def check_resumable(cfg: TrainConfig, ckpt: dict, path: str | Path) -> None:
    """Refuse to resume ``cfg`` from a checkpoint of other settings or from a ``best.pt``.

    Raises:
        ConfigError: the model, data, loss or optimiser settings differ, or ``ckpt`` holds no
            optimiser state.
    """
    saved = config_from_dict(ckpt["config"])
    for key in ("model", "data", "loss", "optim"):
        if getattr(saved, key) != getattr(cfg, key):
            raise ConfigError(f"cannot resume from {path}: its {key} settings differ from this "
                              "run's; resume with the config saved beside it (config.yaml)")
    if "optimizer" not in ckpt:
        raise ConfigError(f"cannot resume from {path}: it is a best checkpoint; resume from "
                          "last.pt")


def seed_all(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (every CUDA device included)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's randomness."""
    # Each epoch's randomness is a function of (seed, epoch), so a resumed run draws exactly
    # what the uninterrupted run drew, however the previous process ended.
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def rng_state() -> dict[str, Any]:
    """The global generators' state, in types ``torch.load(weights_only=True)`` accepts."""
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved."""
    random.setstate(tuple(state["python"][:1]) + (tuple(state["python"][1]),)
                    + tuple(state["python"][2:]))
    np_state = state["numpy"]
    np.random.set_state((np_state[0], np.asarray(np_state[1], dtype=np.uint32), *np_state[2:]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
