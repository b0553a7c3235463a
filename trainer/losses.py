"""Classification losses keyed by name, for hard and soft (mixup/cutmix) targets.

Every loss takes logits ``[N, C]`` and either hard targets (an integer tensor ``[N]`` of class
indices) or soft targets (a float tensor ``[N, C]`` whose rows sum to 1). The loss is computed in
float32 whatever the logits' dtype, so bf16 autocast training stays stable, and is averaged over
the batch. In the formulas below ``p = softmax(z)``, ``t`` is the target distribution (one-hot for
hard targets) and ``i`` / ``c`` index samples / classes.

Use :func:`create_loss` for one loss and :func:`create_loss_mix` for a weighted sum of several.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainer.errors import ConfigError

__all__ = [
    "CrossEntropy",
    "F1Loss",
    "FocalLoss",
    "LabelSmoothingCrossEntropy",
    "LossMix",
    "WeightedCrossEntropy",
    "create_loss",
    "create_loss_mix",
    "list_losses",
]

F1_EPS = 1e-7
# Floor for (1 - p) before raising it to gamma: at p == 1 exactly, d/dx x**gamma is infinite for
# gamma < 1 and would turn the (zero) focal term's gradient into NaN. The floor never changes the
# value because log p == 0 there.
_FOCAL_FLOOR = 1e-12


class _ClassificationLoss(nn.Module):
    """Checks the inputs, casts logits to float32 and dispatches to hard / soft computation."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Return the batch-mean loss as a float32 scalar.

        Args:
            logits: ``[N, C]`` raw scores, any floating dtype.
            target: ``[N]`` integer class indices, or ``[N, C]`` float class probabilities.

        Returns:
            A float32 scalar tensor.

        Raises:
            ValueError: if the shapes or dtypes of ``logits`` and ``target`` do not fit.
        """
        hard = _check_inputs(logits, target, self.num_classes)
        z = logits.float()
        if hard:
            return self._hard(z, target.long())
        return self._soft(z, target.float())

    def _hard(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._soft(z, F.one_hot(y, self.num_classes).float())

    def _soft(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}"


class CrossEntropy(_ClassificationLoss):
    """Cross-entropy: ``mean_i -sum_c t_ic log p_ic`` (``F.cross_entropy`` for hard targets)."""

    def _hard(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(z, y)

    def _soft(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(z, t)


class WeightedCrossEntropy(_ClassificationLoss):
    """Class-weighted cross-entropy, with torch's normalisation.

    Hard targets: ``sum_i w_{y_i} nll_i / sum_i w_{y_i}`` (a weighted mean).
    Soft targets: ``mean_i -sum_c w_c t_ic log p_ic`` (what ``F.cross_entropy(weight=w)`` does
    with probability targets; note it divides by N, not by the summed weights).

    The weights live in the buffer ``weight`` so ``.to(device)`` moves them.
    """

    weight: torch.Tensor

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__(int(weight.numel()))
        self.register_buffer("weight", weight.detach().float().clone())

    def _hard(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # .float() in case someone called .to(bfloat16) on the module along with a model.
        return F.cross_entropy(z, y, weight=self.weight.float())

    def _soft(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(z, t, weight=self.weight.float())


class FocalLoss(_ClassificationLoss):
    """Multi-class focal loss (Lin et al. 2017), soft-target form.

    ``mean_i -sum_c t_ic (1 - p_ic)^gamma log p_ic``; ``gamma = 0`` is plain cross-entropy.
    """

    def __init__(self, num_classes: int, gamma: float) -> None:
        super().__init__(num_classes)
        self.gamma = gamma

    def _modulated_nll(self, logp: torch.Tensor) -> torch.Tensor:
        # -expm1(log p) is 1 - p without the cancellation error of 1 - exp(log p) near p = 1.
        one_minus_p = (-torch.expm1(logp)).clamp_min(_FOCAL_FLOOR)
        return -(one_minus_p**self.gamma) * logp

    def _hard(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logp_y = F.log_softmax(z, dim=1).gather(1, y.unsqueeze(1)).squeeze(1)
        return self._modulated_nll(logp_y).mean()

    def _soft(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return (t * self._modulated_nll(F.log_softmax(z, dim=1))).sum(dim=1).mean()

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, gamma={self.gamma}"


class LabelSmoothingCrossEntropy(_ClassificationLoss):
    """Cross-entropy against smoothed targets ``t' = t (1 - eps) + eps / C``.

    For hard targets this is exactly ``F.cross_entropy(z, y, label_smoothing=eps)``.
    """

    def __init__(self, num_classes: int, smoothing: float) -> None:
        super().__init__(num_classes)
        self.smoothing = smoothing

    def _hard(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(z, y, label_smoothing=self.smoothing)

    def _soft(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        smoothed = t * (1.0 - self.smoothing) + self.smoothing / self.num_classes
        return F.cross_entropy(z, smoothed)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, smoothing={self.smoothing}"


class F1Loss(_ClassificationLoss):
    """Soft macro-F1 loss, ``1 - mean_c f1_c``, computed over the batch.

    With ``p = softmax(z)``: ``tp_c = sum_i p_ic t_ic``, ``fp_c = sum_i p_ic (1 - t_ic)``,
    ``fn_c = sum_i (1 - p_ic) t_ic`` and ``f1_c = 2 tp_c / (2 tp_c + fp_c + fn_c + 1e-7)``.
    A class absent from the batch has ``tp_c = 0`` and so ``f1_c = 0``: every class counts, as
    in the competition's macro-F1 (and its teams' ``F1Loss``).
    """

    def _soft(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        p = F.softmax(z, dim=1)
        tp = (p * t).sum(dim=0)
        fp = (p * (1.0 - t)).sum(dim=0)
        fn = ((1.0 - p) * t).sum(dim=0)
        f1 = 2.0 * tp / (2.0 * tp + fp + fn + F1_EPS)
        return 1.0 - f1.mean()


class LossMix(nn.Module):
    """Weighted sum of named losses: ``sum_k weights[k] * losses[k](z, t)``.

    Attributes:
        weights: ``{name: weight}`` of the terms that are computed (all weights > 0).
        losses: ``nn.ModuleDict`` of the same names.
    """

    def __init__(self, losses: Mapping[str, nn.Module], weights: Mapping[str, float]) -> None:
        super().__init__()
        self.losses = nn.ModuleDict(dict(losses))
        self.weights = dict(weights)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Return the weighted sum of the terms as a float32 scalar.

        Args:
            logits: ``[N, C]`` raw scores, any floating dtype.
            target: ``[N]`` integer class indices, or ``[N, C]`` float class probabilities.

        Returns:
            A float32 scalar tensor.

        Raises:
            ValueError: if the shapes or dtypes of ``logits`` and ``target`` do not fit.
        """
        total: torch.Tensor | None = None
        for name, loss in self.losses.items():
            # Multiplying by 1.0 is exact, so a single-term mix equals the loss bit for bit.
            term = self.weights[name] * loss(logits, target)
            total = term if total is None else total + term
        assert total is not None  # the factory never builds an empty mix
        return total

    def extra_repr(self) -> str:
        return "weights={" + ", ".join(f"{k}: {v:g}" for k, v in self.weights.items()) + "}"


def _check_inputs(logits: torch.Tensor, target: torch.Tensor, num_classes: int) -> bool:
    """Return True for hard targets, False for soft ones; raise ValueError if they do not fit."""
    if logits.dim() != 2 or not logits.is_floating_point():
        raise ValueError(
            f"logits must be a floating tensor of shape [N, C], got {logits.dtype} "
            f"{tuple(logits.shape)}"
        )
    n, c = logits.shape
    if c != num_classes:
        raise ValueError(f"logits have {c} classes but the loss was built for {num_classes}")
    if n == 0:
        raise ValueError("cannot compute a loss over an empty batch")
    if target.dim() == 1:
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise ValueError(
                f"1-D targets must be integer class indices, got dtype {target.dtype}; "
                "soft targets must have shape [N, C]"
            )
        if target.shape[0] != n:
            raise ValueError(f"got {target.shape[0]} targets for {n} logits rows")
        return True
    if target.dim() == 2:
        if not target.is_floating_point():
            raise ValueError(f"2-D (soft) targets must be floating, got dtype {target.dtype}")
        if target.shape != logits.shape:
            raise ValueError(
                f"soft targets have shape {tuple(target.shape)} but logits have {(n, c)}"
            )
        return False
    raise ValueError(
        f"targets must have shape [N] (class indices) or [N, C] (probabilities), "
        f"got {tuple(target.shape)}"
    )


def _class_weights(class_counts: Sequence[int] | np.ndarray, num_classes: int) -> torch.Tensor:
    """Inverse class frequency, ``total / (C * max(n_c, 1))``, as a float32 tensor."""
    try:
        counts = np.asarray(class_counts, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"class_counts must be a list of {num_classes} non-negative numbers, "
            f"got {class_counts!r}"
        ) from exc
    if counts.shape != (num_classes,):
        raise ConfigError(
            f"class_counts must have one entry per class ({num_classes}), got shape {counts.shape}"
        )
    if not np.all(np.isfinite(counts)) or np.any(counts < 0):
        raise ConfigError(
            f"class_counts must be finite and >= 0, got {counts.tolist()}; "
            "pass the number of training images per class"
        )
    total = counts.sum()
    if total <= 0:
        raise ConfigError("class_counts are all 0; pass the number of training images per class")
    # Clamp so a class missing from the training split gets a large but finite weight.
    weights = total / (num_classes * np.maximum(counts, 1.0))
    return torch.tensor(weights, dtype=torch.float32)


def _build_ce(num_classes: int, **_: object) -> nn.Module:
    return CrossEntropy(num_classes)


def _build_weighted_ce(
    num_classes: int, class_counts: Sequence[int] | np.ndarray | None, **_: object
) -> nn.Module:
    if class_counts is None:
        raise ConfigError(
            "loss 'weighted_ce' needs class_counts (training images per class); "
            "pass class_counts or choose another loss such as 'ce'"
        )
    return WeightedCrossEntropy(_class_weights(class_counts, num_classes))


def _build_focal(num_classes: int, gamma: float, **_: object) -> nn.Module:
    return FocalLoss(num_classes, gamma)


def _build_label_smoothing(num_classes: int, smoothing: float, **_: object) -> nn.Module:
    return LabelSmoothingCrossEntropy(num_classes, smoothing)


def _build_f1(num_classes: int, **_: object) -> nn.Module:
    return F1Loss(num_classes)


_LOSSES: dict[str, Callable[..., nn.Module]] = {
    "ce": _build_ce,
    "weighted_ce": _build_weighted_ce,
    "focal": _build_focal,
    "label_smoothing": _build_label_smoothing,
    "f1": _build_f1,
}


def list_losses() -> list[str]:
    """Return the registered loss names, sorted.

    Returns:
        ``["ce", "f1", "focal", "label_smoothing", "weighted_ce"]``.
    """
    return sorted(_LOSSES)


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_name(name: object) -> str:
    if not isinstance(name, str) or name not in _LOSSES:
        raise ConfigError(f"unknown loss {name!r}; valid losses: {', '.join(list_losses())}")
    return name


def _check_hyperparameters(*, num_classes: int, gamma: float, smoothing: float) -> None:
    if not isinstance(num_classes, numbers.Integral) or isinstance(num_classes, bool):
        raise ConfigError(f"num_classes must be an integer >= 1, got {num_classes!r}")
    if num_classes < 1:
        raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
    if not _is_real(gamma) or not math.isfinite(gamma) or gamma < 0:
        raise ConfigError(
            f"focal gamma must be a finite number >= 0, got {gamma!r}; "
            "use 0 for plain cross-entropy or a value such as 2.0"
        )
    if not _is_real(smoothing) or not math.isfinite(smoothing) or not 0 <= smoothing < 1:
        raise ConfigError(
            f"label smoothing must be in [0, 1), got {smoothing!r}; "
            "use a small value such as 0.1 (0 disables it)"
        )


def create_loss(
    name: str,
    *,
    num_classes: int = 18,
    class_counts: Sequence[int] | np.ndarray | None = None,
    gamma: float = 2.0,
    smoothing: float = 0.1,
) -> nn.Module:
    """Build the loss registered under ``name``.

    The module is called as ``loss(logits, target)`` with logits ``[N, C]`` and targets either
    ``[N]`` class indices or ``[N, C]`` probabilities; it returns the batch mean in float32.
    Definitions (``p = softmax(z)``, ``t`` the one-hot or soft target):

    - ``ce``: ``mean_i -sum_c t_ic log p_ic``.
    - ``weighted_ce``: ``w_c = total / (C * max(n_c, 1))``; hard targets
      ``sum_i w_{y_i} nll_i / sum_i w_{y_i}``, soft targets ``mean_i -sum_c w_c t_ic log p_ic``.
    - ``focal``: ``mean_i -sum_c t_ic (1 - p_ic)^gamma log p_ic``.
    - ``label_smoothing``: ``ce`` against ``t (1 - smoothing) + smoothing / C``.
    - ``f1``: ``1 - mean_c 2 tp_c / (2 tp_c + fp_c + fn_c + 1e-7)`` with soft counts
      ``tp_c = sum_i p_ic t_ic``, ``fp_c = sum_i p_ic (1 - t_ic)``,
      ``fn_c = sum_i (1 - p_ic) t_ic``.

    Args:
        name: one of :func:`list_losses`.
        num_classes: number of classes C; the logits must have C columns.
        class_counts: training images per class, length C; required by ``weighted_ce``.
        gamma: focusing parameter of ``focal``, >= 0.
        smoothing: label smoothing of ``label_smoothing``, in [0, 1).

    Returns:
        The loss module.

    Raises:
        ConfigError: for an unknown name, missing or invalid ``class_counts`` (``weighted_ce``),
            or an out-of-range ``num_classes``, ``gamma`` or ``smoothing``.
    """
    name = _check_name(name)
    _check_hyperparameters(num_classes=num_classes, gamma=gamma, smoothing=smoothing)
    return _LOSSES[name](
        num_classes=int(num_classes),
        class_counts=class_counts,
        gamma=float(gamma),
        smoothing=float(smoothing),
    )


def create_loss_mix(
    weights: Mapping[str, float],
    *,
    num_classes: int = 18,
    class_counts: Sequence[int] | np.ndarray | None = None,
    gamma: float = 2.0,
    smoothing: float = 0.1,
) -> LossMix:
    """Build the weighted sum of named losses, e.g. ``{"f1": 0.4, "focal": 0.6}``.

    Terms with weight 0 are dropped before they are built, so they cost nothing and
    ``{"weighted_ce": 0, "ce": 1}`` does not need ``class_counts``. A single term with weight 1
    gives exactly the value of that loss alone.

    Args:
        weights: ``{loss name: weight}``; names from :func:`list_losses`, weights finite and >= 0,
            at least one > 0.
        num_classes: number of classes C, passed to every term.
        class_counts: training images per class, passed to ``weighted_ce``.
        gamma: focusing parameter of ``focal``.
        smoothing: label smoothing of ``label_smoothing``.

    Returns:
        A :class:`LossMix` whose ``.weights`` holds the kept terms.

    Raises:
        ConfigError: for an empty or non-mapping ``weights``, an unknown name, a negative,
            non-finite or non-numeric weight, all weights 0, or any error of :func:`create_loss`.
    """
    if not isinstance(weights, Mapping):
        raise ConfigError(
            f"loss mix must be a mapping of loss name to weight, got {type(weights).__name__}"
        )
    if not weights:
        raise ConfigError(
            "loss mix is empty; give at least one loss with a weight, "
            "e.g. {'f1': 0.4, 'focal': 0.6}"
        )
    for name, weight in weights.items():
        _check_name(name)
        if not _is_real(weight) or not math.isfinite(weight) or weight < 0:
            raise ConfigError(
                f"loss mix weight for {name!r} must be a finite number >= 0, got {weight!r}"
            )
    kept = {name: float(weight) for name, weight in weights.items() if weight > 0}
    if not kept:
        raise ConfigError(
            f"loss mix weights are all 0 ({dict(weights)}); give at least one loss a weight > 0"
        )
    losses = {
        name: create_loss(
            name,
            num_classes=num_classes,
            class_counts=class_counts,
            gamma=gamma,
            smoothing=smoothing,
        )
        for name in kept
    }
    return LossMix(losses, kept)
