"""Where a run computes: the device, its human label, and the mixed precision it uses."""
from __future__ import annotations

import contextlib

import torch

from trainer.errors import ConfigError

__all__ = [
    "amp_dtype",
    "autocast",
    "configure_backends",
    "device_label",
    "device_name",
    "resolve_device",
]


def resolve_device(name: str = "auto") -> torch.device:
    """The torch device a configured device name means.

    Args:
        name: ``auto`` (the first CUDA device when there is one, else the CPU), ``cpu`` or
            ``cuda[:N]``.

    Returns:
        The device.

    Raises:
        ConfigError: a CUDA device is asked for but none is visible.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device is {name!r} but no CUDA device is visible; use device: auto "
                          "or cpu")
    return torch.device(name)


def device_label(device: str) -> str:
    """The human label of a configured device, without touching the device.

    Args:
        device: the configured name (``auto``, ``cpu``, ``cuda``, ``cuda:1``, ...).

    Returns:
        The GPU's model name for ``auto``/``cuda`` when CUDA is available, ``cpu`` for ``auto``
        without CUDA, otherwise ``device`` itself.
    """
    if device in ("auto", "cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return "cpu" if device == "auto" else device


def device_name(device: torch.device) -> str:
    """The GPU's model name for a CUDA device, ``cpu`` otherwise."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


def configure_backends(device: torch.device) -> None:
    """Let cuDNN pick the fastest kernels and matmuls use TF32 on a CUDA device."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``; ``None`` means full fp32."""
    if device.type != "cuda" or precision == "fp32":
        return None
    if precision == "fp16":
        return torch.float16
    if precision == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None):
    """An autocast context for ``dtype``, or a no-op one for ``None``."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
