"""Where a model's starting weights come from, found without building or downloading anything.

Sources, in order: ``model.pretrained_file``; a ``<model name>*`` file in the weights folder
(``model.weights_dir``, else ``$HPO_WEIGHTS_DIR``); timm's own download of the model's weights
in the local Hugging Face (or torch hub) cache; the hub itself, when it answers a 3 s request
and ``HF_HUB_OFFLINE`` is not set. A weights folder that holds no file for the model is a
dead end, never a reason to try the hub: whoever set it meant to run offline.
"""
from __future__ import annotations

import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import torch
from timm.models import get_pretrained_cfg, split_model_name_tag

from trainer.config import ModelConfig
from trainer.errors import ConfigError
from trainer.model_names import check_model_name

__all__ = ["WEIGHT_SUFFIXES", "WeightsSource", "find_weights", "hub_offline", "resolve_weights"]

WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
# timm's Hugging Face file names (timm.models._hub): safetensors preferred, like timm does.
_HF_FILES = ("model.safetensors", "pytorch_model.bin")
_TRUE = {"1", "ON", "YES", "TRUE"}

WeightsKind = Literal["none", "file", "folder", "cache", "hub", "missing"]


@dataclass(frozen=True)
class WeightsSource:
    """Where one model's pretrained weights come from.

    ``kind`` is ``none`` (``pretrained: false``, nothing needed), ``file``
    (``model.pretrained_file``), ``folder`` (a match in the weights folder), ``cache`` (timm's
    earlier download, found in the local Hugging Face or torch hub cache), ``hub`` (timm will
    download from ``location`` at build time) or ``missing`` (``reason`` says why, in words
    that do not repeat the model's name, and ``fix`` what to do). ``location`` is the local
    file for ``file``/``folder``/``cache``.
    """

    model: str
    kind: WeightsKind
    location: str | None = None
    reason: str | None = None
    fix: str | None = None
    custom_load: bool = False

    @property
    def local_file(self) -> str | None:
        """The file timm loads from, or None when the weights are not on this machine."""
        return self.location if self.kind in ("file", "folder", "cache") else None

    def describe(self) -> str:
        """One line for logs, e.g. ``mobilenetv2_100: weights from /w/mobilenetv2_100.pth``."""
        if self.kind == "none":
            return f"{self.model}: no pretrained weights (pretrained: false)"
        if self.kind == "hub":
            return f"{self.model}: weights from the hub ({self.location})"
        if self.kind == "missing":
            return f"{self.model}: no pretrained weights: {self.reason}"
        return f"{self.model}: weights from {self.kind} {self.location}"

    def require(self) -> WeightsSource:
        """This source, unless it is missing.

        Returns:
            ``self``.

        Raises:
            ConfigError: ``kind == "missing"``, one line: the model, the reason and the fix.
        """
        if self.kind == "missing":
            raise ConfigError(f"no pretrained weights for model {self.model}: {self.reason}; "
                              f"{self.fix}")
        return self


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` says not to reach the hub (read now, not at import)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in _TRUE:
        return True
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _weights_folder(cfg: ModelConfig) -> tuple[Path, str] | None:
    if cfg.weights_dir:
        return Path(cfg.weights_dir).expanduser(), "model.weights_dir"
    env = os.environ.get("HPO_WEIGHTS_DIR")
    if env:
        return Path(env).expanduser(), "HPO_WEIGHTS_DIR"
    return None


def _match(name: str, folder: Path) -> Path | None:
    base, _ = split_model_name_tag(name)
    for f in sorted(folder.iterdir()):
        # "resnet34.a1_in1k.pth" matches resnet34 but "resnet34d.pth" does not.
        if f.suffix in WEIGHT_SUFFIXES and (f.stem == base or f.stem.startswith(base + ".")):
            return f
    return None


def find_weights(name: str, weights_dir: str | None) -> Path | None:
    """Look for ``<model name>*`` weight files in ``weights_dir`` or ``$HPO_WEIGHTS_DIR``.

    Args:
        name: a timm model name, optionally with a tag (the tag is ignored).
        weights_dir: the folder; None means ``$HPO_WEIGHTS_DIR`` (unset: no folder).

    Returns:
        The first match in name order, or None (no folder, or no match).

    Raises:
        ConfigError: the folder does not exist.
    """
    found = _weights_folder(ModelConfig(name=name, weights_dir=weights_dir))
    if found is None:
        return None
    folder, setting = found
    if not folder.is_dir():
        _from_folder(ModelConfig(name=name, weights_dir=weights_dir), folder, setting).require()
    return _match(name, folder)


def _hf_location(pcfg: Any) -> tuple[str, str | None, tuple[str, ...]] | None:
    if not pcfg.hf_hub_id:
        return None
    repo, _, revision = pcfg.hf_hub_id.partition("@")
    files = (pcfg.hf_hub_filename,) if pcfg.hf_hub_filename else _HF_FILES
    return repo, revision or None, files


def _cached(pcfg: Any) -> str | None:
    """timm's earlier download of these weights, if this machine has it."""
    from huggingface_hub import try_to_load_from_cache

    hf = _hf_location(pcfg)
    if hf is not None:
        repo, revision, files = hf
        for filename in files:
            path = try_to_load_from_cache(repo, filename, revision=revision)
            if isinstance(path, str) and Path(path).is_file():
                return path
    if pcfg.url:
        path = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(pcfg.url).path).name
        if path.is_file():
            return str(path)
    return None


def _hub_answers(pcfg: Any, timeout: float) -> tuple[str | None, str]:
    """(where timm would download from, "") if that answers within ``timeout`` s, else
    (None, why not)."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import EntryNotFoundError

    hf = _hf_location(pcfg)
    if hf is not None:  # timm prefers the Hugging Face hub whenever the model has an id there
        repo, revision, files = hf
        for filename in files:
            try:
                get_hf_file_metadata(hf_hub_url(repo, filename, revision=revision),
                                     timeout=timeout)
                return f"{repo}/{filename}", ""
            except EntryNotFoundError:
                continue
            except Exception as exc:  # noqa: BLE001 - any other failure: not reachable now
                return None, _first_line(exc)
        return None, f"{repo} has none of {', '.join(files)}"
    try:
        with urllib.request.urlopen(urllib.request.Request(pcfg.url, method="HEAD"),
                                    timeout=timeout):
            return str(pcfg.url), ""
    except Exception as exc:  # noqa: BLE001
        return None, _first_line(exc)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def _missing(name: str, reason: str, fix: str | None = None) -> WeightsSource:
    base, _ = split_model_name_tag(name)
    fix = fix or (f"put {base}.pth (a timm state dict) in a folder and set HPO_WEIGHTS_DIR (or "
                  "model.weights_dir) to it, or set model.pretrained: false")
    return WeightsSource(model=name, kind="missing", reason=reason, fix=fix)


def _from_folder(cfg: ModelConfig, folder: Path, setting: str) -> WeightsSource:
    base, _ = split_model_name_tag(cfg.name)
    if not folder.is_dir():
        return _missing(cfg.name, f"weights folder {folder} does not exist (set by {setting})",
                        f"fix {setting}, or unset it to use timm's cache or hub")
    found = _match(cfg.name, folder)
    if found is None:
        return _missing(
            cfg.name,
            f"weights folder {folder} (set by {setting}) has no <name>[.*]"
            f"{{{','.join(WEIGHT_SUFFIXES)}}} file for it, and a weights folder never falls "
            "back to the hub",
            f"put {base}.pth there, set model.pretrained: false, or unset {setting} to use "
            "timm's cache or hub")
    return WeightsSource(model=cfg.name, kind="folder", location=str(found))


def _from_timm(name: str, hub_timeout: float) -> WeightsSource:
    try:
        pcfg = get_pretrained_cfg(name)
    except RuntimeError as exc:  # an unknown pretrained tag
        return _missing(name, str(exc).strip().splitlines()[0].rstrip("."))
    if pcfg is None or not (pcfg.hf_hub_id or pcfg.url or pcfg.file):
        return _missing(name, "timm has none for it")
    if pcfg.file and Path(pcfg.file).is_file():
        return WeightsSource(model=name, kind="cache", location=str(pcfg.file))
    cached = _cached(pcfg)
    if cached is not None:
        custom = bool(pcfg.custom_load) and not cached.endswith(_HF_FILES)
        return WeightsSource(model=name, kind="cache", location=cached, custom_load=custom)
    local = "none on this machine (no weights folder set, not in timm's local download cache)"
    if hub_offline():
        return _missing(name, f"{local} and HF_HUB_OFFLINE is set")
    found, why = _hub_answers(pcfg, hub_timeout)
    if found is None:
        return _missing(name, f"{local} and the hub cannot serve them ({why}; time-out "
                              f"{hub_timeout:g} s)")
    return WeightsSource(model=name, kind="hub", location=found)


def resolve_weights(cfg: ModelConfig, *, hub_timeout: float = 3.0) -> WeightsSource:
    """Where ``cfg``'s pretrained weights come from, without building or downloading.

    Order: ``cfg.pretrained_file`` (used even when ``pretrained`` is false); nothing when
    ``pretrained`` is false; a ``<name>*`` file (.pth/.pt/.bin/.safetensors) in the weights
    folder (``cfg.weights_dir``, else ``$HPO_WEIGHTS_DIR``), and when a folder is set, nothing
    else; timm's earlier download in the local Hugging Face or torch hub cache; the hub, if it
    answers a HEAD request within ``hub_timeout`` seconds and ``HF_HUB_OFFLINE`` is not set.

    Args:
        cfg: the model settings.
        hub_timeout: seconds to wait for the hub.

    Returns:
        The source; ``kind == "missing"`` (with ``reason`` and ``fix``) when none works.
        :meth:`WeightsSource.require` turns that into an error.

    Raises:
        ConfigError: ``cfg.name`` is not a timm model.
    """
    check_model_name(cfg.name)
    if cfg.pretrained_file is not None:
        path = Path(cfg.pretrained_file).expanduser()
        if not path.is_file():
            return _missing(cfg.name, f"model.pretrained_file {path} does not exist",
                            "fix the path")
        return WeightsSource(model=cfg.name, kind="file", location=str(path))
    if not cfg.pretrained:
        return WeightsSource(model=cfg.name, kind="none")
    folder = _weights_folder(cfg)
    if folder is not None:
        return _from_folder(cfg, *folder)
    return _from_timm(cfg.name, hub_timeout)
