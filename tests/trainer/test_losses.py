"""Tests for trainer.losses: registry, hand-computed values, equivalences and config errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from trainer.errors import ConfigError
from trainer.losses import LossMix, create_loss, create_loss_mix, list_losses

ALL_COUNTS = {3: [5, 1, 2], 18: list(range(1, 19))}

# Tiny fixed example for the hand-computed checks: 2 samples, 3 classes.
LOGITS = [[1.0, 2.0, 0.5], [0.3, -1.0, 2.2]]
HARD = [1, 2]
SOFT = [[0.7, 0.2, 0.1], [0.0, 0.5, 0.5]]
COUNTS = [10, 0, 30]


# ---------------------------------------------------------------- plain-Python reference maths


def softmax(row: list[float]) -> list[float]:
    m = max(row)
    e = [math.exp(v - m) for v in row]
    s = sum(e)
    return [v / s for v in e]


def one_hot(labels: list[int], c: int) -> list[list[float]]:
    return [[1.0 if k == y else 0.0 for k in range(c)] for y in labels]


def hand_ce(logits: list[list[float]], targets: list[list[float]], w=None) -> float:
    c = len(logits[0])
    w = w or [1.0] * c
    total = 0.0
    for z, t in zip(logits, targets, strict=True):
        p = softmax(z)
        total += -sum(w[k] * t[k] * math.log(p[k]) for k in range(c))
    return total / len(logits)


def hand_weighted_ce_hard(logits: list[list[float]], labels: list[int], w: list[float]) -> float:
    num = sum(w[y] * -math.log(softmax(z)[y]) for z, y in zip(logits, labels, strict=True))
    return num / sum(w[y] for y in labels)


def hand_focal(logits: list[list[float]], targets: list[list[float]], gamma: float) -> float:
    total = 0.0
    for z, t in zip(logits, targets, strict=True):
        p = softmax(z)
        total += -sum(t[k] * (1 - p[k]) ** gamma * math.log(p[k]) for k in range(len(z)))
    return total / len(logits)


def hand_label_smoothing(logits: list[list[float]], targets: list[list[float]], eps: float):
    c = len(logits[0])
    smoothed = [[v * (1 - eps) + eps / c for v in t] for t in targets]
    return hand_ce(logits, smoothed)


def hand_f1(logits: list[list[float]], targets: list[list[float]]) -> float:
    c = len(logits[0])
    probs = [softmax(z) for z in logits]
    f1s = []
    for k in range(c):
        tp = sum(p[k] * t[k] for p, t in zip(probs, targets, strict=True))
        fp = sum(p[k] * (1 - t[k]) for p, t in zip(probs, targets, strict=True))
        fn = sum((1 - p[k]) * t[k] for p, t in zip(probs, targets, strict=True))
        f1s.append(2 * tp / (2 * tp + fp + fn + 1e-7))
    return 1 - sum(f1s) / c


def hand_weights(counts: list[int]) -> list[float]:
    c = len(counts)
    return [sum(counts) / (c * max(n, 1)) for n in counts]


def hand_value(name: str, targets: list[list[float]], *, hard: bool) -> float:
    """Reference value of ``name`` on LOGITS, with gamma=2 and smoothing=0.1."""
    if name == "ce":
        return hand_ce(LOGITS, targets)
    if name == "weighted_ce":
        w = hand_weights(COUNTS)
        return hand_weighted_ce_hard(LOGITS, HARD, w) if hard else hand_ce(LOGITS, targets, w)
    if name == "focal":
        return hand_focal(LOGITS, targets, 2.0)
    if name == "label_smoothing":
        return hand_label_smoothing(LOGITS, targets, 0.1)
    if name == "f1":
        return hand_f1(LOGITS, targets)
    raise AssertionError(name)


# ---------------------------------------------------------------- helpers


def make_batch(c: int, n: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=g) * 2
    hard = torch.randint(0, c, (n,), generator=g)
    soft = torch.softmax(torch.randn(n, c, generator=g), dim=1)
    return logits, hard, soft


def build(name: str, c: int = 3, **kwargs):
    kwargs.setdefault(
        "class_counts", ALL_COUNTS.get(c, [1] * c) if name == "weighted_ce" else None
    )
    return create_loss(name, num_classes=c, **kwargs)


# ---------------------------------------------------------------- registry


def test_list_losses_is_sorted_and_complete():
    assert list_losses() == ["ce", "f1", "focal", "label_smoothing", "weighted_ce"]


@pytest.mark.parametrize("c", [3, 18])
@pytest.mark.parametrize("kind", ["hard", "soft"])
@pytest.mark.parametrize("name", list_losses())
def test_every_loss_is_finite_scalar_with_gradient(name, kind, c):
    logits, hard, soft = make_batch(c)
    logits.requires_grad_(True)
    loss = build(name, c)(logits, hard if kind == "hard" else soft)
    assert loss.shape == ()
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss)
    loss.backward()
    assert logits.grad is not None
    assert torch.isfinite(logits.grad).all()
    assert logits.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", ["hard", "soft"])
@pytest.mark.parametrize("name", list_losses())
def test_bf16_logits_give_float32_loss_and_gradient(name, kind):
    logits, hard, soft = make_batch(18)
    logits = logits.bfloat16().requires_grad_(True)
    target = hard if kind == "hard" else soft.bfloat16()
    loss = build(name, 18)(logits, target)
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss)
    loss.backward()
    assert logits.grad is not None and logits.grad.dtype == torch.bfloat16
    assert torch.isfinite(logits.grad.float()).all()


# ---------------------------------------------------------------- hand-computed values


@pytest.mark.parametrize("kind", ["hard", "soft"])
@pytest.mark.parametrize("name", list_losses())
def test_loss_matches_hand_computation(name, kind):
    hard = kind == "hard"
    targets = one_hot(HARD, 3) if hard else SOFT
    expected = hand_value(name, targets, hard=hard)
    target = torch.tensor(HARD) if hard else torch.tensor(SOFT)
    loss = create_loss(name, num_classes=3, class_counts=COUNTS)(torch.tensor(LOGITS), target)
    assert loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_hand_weighted_ce_differs_from_ce():
    # Guards against the weighted reference silently equalling the unweighted one.
    w = hand_weights(COUNTS)
    assert w == pytest.approx([40 / 30, 40 / 3, 40 / 90])
    assert hand_weighted_ce_hard(LOGITS, HARD, w) != pytest.approx(
        hand_ce(LOGITS, one_hot(HARD, 3))
    )


def test_weighted_ce_weights_are_inverse_frequency_buffer():
    loss = create_loss("weighted_ce", num_classes=3, class_counts=COUNTS)
    buffers = dict(loss.named_buffers())
    assert "weight" in buffers
    assert buffers["weight"].dtype == torch.float32
    assert buffers["weight"].tolist() == pytest.approx(hand_weights(COUNTS), rel=1e-6)


def test_focal_gamma_changes_value_by_hand():
    soft = torch.tensor(SOFT)
    got = create_loss("focal", num_classes=3, gamma=0.5)(torch.tensor(LOGITS), soft)
    assert got.item() == pytest.approx(hand_focal(LOGITS, SOFT, 0.5), rel=1e-5)


# ---------------------------------------------------------------- equivalences


@pytest.mark.parametrize("kind", ["hard", "soft"])
def test_focal_with_gamma_zero_equals_ce(kind):
    logits, hard, soft = make_batch(18)
    target = hard if kind == "hard" else soft
    focal = create_loss("focal", gamma=0.0)(logits, target)
    ce = create_loss("ce")(logits, target)
    torch.testing.assert_close(focal, ce)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_label_smoothing_hard_equals_torch(eps):
    logits, hard, _ = make_batch(18)
    got = create_loss("label_smoothing", smoothing=eps)(logits, hard)
    torch.testing.assert_close(got, F.cross_entropy(logits, hard, label_smoothing=eps))


@pytest.mark.parametrize("kind", ["hard", "soft"])
def test_weighted_ce_with_equal_counts_equals_ce(kind):
    logits, hard, soft = make_batch(18)
    target = hard if kind == "hard" else soft
    weighted = create_loss("weighted_ce", class_counts=[7] * 18)(logits, target)
    torch.testing.assert_close(weighted, create_loss("ce")(logits, target))


@pytest.mark.parametrize("name", ["ce", "focal", "f1", "label_smoothing"])
def test_hard_target_equals_its_one_hot_form(name):
    logits, hard, _ = make_batch(18)
    loss = create_loss(name)
    torch.testing.assert_close(loss(logits, hard), loss(logits, F.one_hot(hard, 18).float()))


def test_weighted_ce_survives_a_missing_class():
    logits, hard, soft = make_batch(3)
    loss = create_loss("weighted_ce", num_classes=3, class_counts=[4, 0, 9])
    assert torch.isfinite(loss(logits, hard)) and torch.isfinite(loss(logits, soft))


def test_focal_is_finite_for_saturated_logits():
    logits = torch.tensor([[200.0, 0.0, 0.0], [0.0, 200.0, 0.0]], requires_grad=True)
    soft = torch.tensor([[0.9, 0.1, 0.0], [0.0, 1.0, 0.0]])
    loss = create_loss("focal", num_classes=3, gamma=0.5)(logits, soft)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


# ---------------------------------------------------------------- mix


@pytest.mark.parametrize("kind", ["hard", "soft"])
def test_mix_equals_weighted_sum_and_hand_value(kind):
    hard = kind == "hard"
    target = torch.tensor(HARD) if hard else torch.tensor(SOFT)
    logits = torch.tensor(LOGITS)
    mix = create_loss_mix({"f1": 0.4, "focal": 0.6}, num_classes=3)
    assert isinstance(mix, LossMix)
    got = mix(logits, target)
    f1 = create_loss("f1", num_classes=3)(logits, target)
    focal = create_loss("focal", num_classes=3)(logits, target)
    torch.testing.assert_close(got, 0.4 * f1 + 0.6 * focal)
    targets = one_hot(HARD, 3) if hard else SOFT
    expected = 0.4 * hand_f1(LOGITS, targets) + 0.6 * hand_focal(LOGITS, targets, 2.0)
    assert got.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("name", list_losses())
def test_single_term_mix_equals_loss_alone_exactly(name):
    logits, hard, soft = make_batch(18)
    counts = ALL_COUNTS[18]
    alone = create_loss(name, class_counts=counts)
    mix = create_loss_mix({name: 1.0}, class_counts=counts)
    for target in (hard, soft):
        assert torch.equal(mix(logits, target), alone(logits, target))


def test_mix_drops_zero_weight_terms():
    # weighted_ce would need class_counts: being dropped, it must not even be built.
    mix = create_loss_mix({"weighted_ce": 0.0, "f1": 0, "ce": 2.0}, num_classes=3)
    assert mix.weights == {"ce": 2.0}
    assert list(mix.losses) == ["ce"]
    logits, hard, _ = make_batch(3)
    torch.testing.assert_close(mix(logits, hard), 2.0 * F.cross_entropy(logits, hard))


def test_mix_moves_weight_buffers_with_to():
    mix = create_loss_mix({"weighted_ce": 1.0}, num_classes=3, class_counts=COUNTS)
    mix = mix.to(torch.float64)
    logits, hard, _ = make_batch(3)
    assert torch.isfinite(mix(logits, hard))


# ---------------------------------------------------------------- f1 behaviour


def test_f1_perfect_confident_predictions_near_zero():
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    logits = F.one_hot(labels, 3).float() * 50
    loss = create_loss("f1", num_classes=3)(logits, labels)
    assert 0 <= loss.item() < 1e-4


def test_f1_is_lower_for_better_predictions():
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    loss = create_loss("f1", num_classes=3)
    values = [loss(F.one_hot(labels, 3).float() * k, labels).item() for k in (0.0, 1.0, 3.0, 10.0)]
    assert values == sorted(values, reverse=True)
    assert len(set(values)) == len(values)


# ---------------------------------------------------------------- input validation


def test_shape_mismatches_raise_value_error():
    loss = create_loss("ce", num_classes=3)
    logits = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="soft targets have shape"):
        loss(logits, torch.full((2, 4), 0.25))
    with pytest.raises(ValueError, match="got 3 targets for 2"):
        loss(logits, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="logits have 4 classes but the loss was built for 3"):
        loss(torch.zeros(2, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="integer class indices"):
        loss(logits, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="empty batch"):
        loss(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))


# ---------------------------------------------------------------- config errors


def test_unknown_name_lists_valid_losses():
    msg = r"unknown loss 'foo'; valid losses: ce, f1, focal, label_smoothing, weighted_ce"
    with pytest.raises(ConfigError, match=msg):
        create_loss("foo")
    with pytest.raises(ConfigError, match=msg):
        create_loss_mix({"foo": 1.0})


def test_config_error_is_a_value_error():
    with pytest.raises(ValueError):
        create_loss("foo")


def test_weighted_ce_without_counts():
    with pytest.raises(ConfigError, match=r"'weighted_ce' needs class_counts.*pass class_counts"):
        create_loss("weighted_ce")


@pytest.mark.parametrize(
    ("counts", "words"),
    [
        ([1, 2], r"one entry per class \(3\)"),
        ([1, -2, 3], r"finite and >= 0"),
        ([0, 0, 0], r"all 0"),
    ],
)
def test_bad_class_counts(counts, words):
    with pytest.raises(ConfigError, match=words):
        create_loss("weighted_ce", num_classes=3, class_counts=counts)


@pytest.mark.parametrize("gamma", [-1.0, float("nan")])
def test_bad_gamma(gamma):
    with pytest.raises(ConfigError, match=r"focal gamma must be a finite number >= 0, got"):
        create_loss("focal", gamma=gamma)


@pytest.mark.parametrize("smoothing", [1.0, -0.1])
def test_bad_smoothing(smoothing):
    with pytest.raises(ConfigError, match=r"label smoothing must be in \[0, 1\), got"):
        create_loss("label_smoothing", smoothing=smoothing)


def test_bad_num_classes():
    with pytest.raises(ConfigError, match="num_classes must be >= 1"):
        create_loss("ce", num_classes=0)


def test_empty_mix():
    with pytest.raises(ConfigError, match="loss mix is empty"):
        create_loss_mix({})


def test_mix_not_a_mapping():
    with pytest.raises(ConfigError, match="must be a mapping of loss name to weight"):
        create_loss_mix(["ce"])  # type: ignore[arg-type]


@pytest.mark.parametrize("weight", [-0.5, float("nan"), float("inf"), "1", True])
def test_bad_mix_weight(weight):
    with pytest.raises(ConfigError, match=r"loss mix weight for 'focal' must be a finite number"):
        create_loss_mix({"ce": 1.0, "focal": weight})


def test_all_zero_mix_weights():
    with pytest.raises(ConfigError, match=r"loss mix weights are all 0.*weight > 0"):
        create_loss_mix({"ce": 0.0, "f1": 0})
