import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from marsseg.config import LossConfig
from marsseg.losses import (
    CrossEntropyLoss,
    DiceLoss,
    FocalLoss,
    LovaszSoftmaxLoss,
    build_loss,
    class_weights,
    lovasz_gradient,
)

EQUAL = torch.tensor([0.0, 1, 1, 1, 1])


def target_and_uniform_logits():
    target = torch.tensor([[[1, 2, 3, 4], [0, 0, 1, 2]]])  # (1, 2, 4)
    return target, torch.zeros(1, 5, 2, 4)


def test_dice_of_uniform_prediction_has_known_value():
    target, logits = target_and_uniform_logits()
    # per valid pixel: sum_c p y = 0.2, sum_c (p + y) over classes 1..4 = 0.8 + 1 -> 1 - 2 * 0.2 / 1.8
    assert DiceLoss(EQUAL, smooth=0.0)(logits, target).item() == pytest.approx(1 - 0.4 / 1.8)


def test_dice_of_perfect_prediction_is_near_zero():
    target, _ = target_and_uniform_logits()
    logits = F.one_hot(target, 5).permute(0, 3, 1, 2).float() * 30
    assert DiceLoss(EQUAL, smooth=0.0)(logits, target).item() == pytest.approx(0.0, abs=1e-6)


def test_per_class_dice_counts_a_missed_rare_class_as_much_as_a_common_one():
    target = torch.tensor([[[1, 1, 1, 4, 0]]])  # (1, 1, 5): three soil, one big rock, one background
    logits = F.one_hot(torch.ones_like(target), 5).permute(0, 3, 1, 2).float() * 30  # soil everywhere
    # soil: I = 3, T = 4 + 3; big rock: I = 0, T = 1; bedrock and sand: I = T = 0 (smooth 1)
    assert DiceLoss(EQUAL)(logits, target).item() == pytest.approx(1 - 7 / 9, abs=1e-5)
    per_class = (1 - 7 / 8) + (1 - 1 / 2)  # soil and big rock; the absent classes score a perfect 1
    assert DiceLoss(EQUAL, per_class=True)(logits, target).item() == pytest.approx(per_class / 4, abs=1e-5)
    weights = torch.tensor([0.0, 1, 1, 1, 5])
    weighted = (1 - 7 / 8) + 5 * (1 - 1 / 2)
    assert DiceLoss(weights, per_class=True)(logits, target).item() == pytest.approx(weighted / 8, abs=1e-5)


def test_focal_of_uniform_prediction_has_known_value():
    target, logits = target_and_uniform_logits()
    assert FocalLoss(EQUAL, gamma=2.0)(logits, target).item() == pytest.approx(0.64 * math.log(5))
    assert FocalLoss(EQUAL, gamma=0.0)(logits, target).item() == pytest.approx(math.log(5))


def test_background_pixels_do_not_change_any_loss():
    target, logits = target_and_uniform_logits()
    changed = logits.clone()
    changed[0, :, 1, :2] = torch.randn(5, 2) * 10  # the two background pixels
    for loss in (DiceLoss(EQUAL), FocalLoss(EQUAL), CrossEntropyLoss(EQUAL), LovaszSoftmaxLoss()):
        assert loss(changed, target).item() == pytest.approx(loss(logits, target).item())


def test_cross_entropy_matches_torch_on_labeled_pixels():
    torch.manual_seed(0)
    target, _ = target_and_uniform_logits()
    logits = torch.randn(1, 5, 2, 4)
    weights = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0])
    labeled = target != 0
    expected = F.cross_entropy(logits.permute(0, 2, 3, 1)[labeled], target[labeled], weight=weights)
    assert CrossEntropyLoss(weights)(logits, target).item() == pytest.approx(expected.item(), rel=1e-5)


def test_class_weight_schemes():
    masks = np.zeros((1, 10, 10), np.uint8)
    masks[0, :4], masks[0, 4:8], masks[0, 8:9], masks[0, 9, :1] = 1, 2, 3, 4  # freq .4 .4 .1 .01, bg .09
    inverse = class_weights(masks, "inverse").numpy()
    assert inverse[0] == 0 and inverse[1:].mean() == pytest.approx(1.0)
    assert inverse[4] / inverse[1] == pytest.approx(40.0) and inverse[3] / inverse[1] == pytest.approx(4.0)
    root = class_weights(masks, "inverse_sqrt").numpy()
    assert root[4] / root[1] == pytest.approx(math.sqrt(40.0))
    assert class_weights(masks, "none").numpy().tolist() == [0.0, 1.0, 1.0, 1.0, 1.0]
    assert class_weights(masks, "manual", manual=[0, 1, 2, 3, 4]).tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="inverse_sqrt"):
        class_weights(masks, "bogus")


@pytest.mark.parametrize("name", ["dice_focal", "dice", "focal", "cross_entropy", "ce_dice", "lovasz_focal"])
def test_every_loss_has_finite_gradients_even_without_labeled_pixels(name):
    masks = np.random.default_rng(0).integers(0, 5, (2, 8, 8)).astype(np.uint8)
    loss_fn = build_loss(LossConfig(name=name), masks)
    for target in (torch.from_numpy(masks).long(), torch.zeros(2, 8, 8, dtype=torch.long)):
        logits = torch.randn(2, 5, 8, 8, requires_grad=True)
        loss = loss_fn(logits, target)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_study_loss_is_dice_plus_focal():
    masks = np.random.default_rng(1).integers(0, 5, (2, 8, 8)).astype(np.uint8)
    target, logits = torch.from_numpy(masks).long(), torch.randn(2, 5, 8, 8)
    total = build_loss(LossConfig(name="dice_focal"), masks)(logits, target)
    parts = build_loss(LossConfig(name="dice"), masks)(logits, target) + build_loss(LossConfig(name="focal"), masks)(
        logits, target
    )
    assert total.item() == pytest.approx(parts.item())


def test_lovasz_of_hard_predictions_is_one_minus_the_iou_of_each_present_class():
    torch.manual_seed(0)
    target = torch.randint(0, 4, (2, 8, 8))  # classes 0..3: big rock absent, so not averaged in
    predicted = torch.randint(1, 5, (2, 8, 8))
    logits = F.one_hot(predicted, 5).permute(0, 3, 1, 2).float() * 100  # softmax: 0 or 1
    labeled = target != 0
    misses = []
    for c in (1, 2, 3):
        truth, guess = (target == c) & labeled, (predicted == c) & labeled
        misses.append(1 - (truth & guess).sum().item() / (truth | guess).sum().item())
    assert LovaszSoftmaxLoss()(logits, target).item() == pytest.approx(np.mean(misses), rel=1e-5)
    perfect = F.one_hot(target, 5).permute(0, 3, 1, 2).float() * 100
    assert LovaszSoftmaxLoss()(perfect, target).item() == pytest.approx(0.0, abs=1e-6)


def test_lovasz_of_soft_predictions_follows_its_definition_over_the_sorted_errors():
    torch.manual_seed(1)
    target = torch.randint(0, 5, (3, 6, 10))
    logits = torch.randn(3, 5, 6, 10) * 2
    probs = logits.softmax(dim=1).permute(0, 2, 3, 1).double().numpy()
    labels = target.numpy()
    labeled = labels != 0
    per_class = []
    for c in range(1, 5):
        truth = (labels[labeled] == c).astype(float)
        errors = np.abs(truth - probs[labeled][:, c])
        order = np.argsort(-errors, kind="stable")
        found, extra = truth.sum() - np.cumsum(truth[order]), truth.sum() + np.cumsum(1 - truth[order])
        jaccard = np.concatenate([[0.0], 1 - found / extra])  # 1 - IoU once the first k pixels are wrong
        per_class.append(np.dot(errors[order], np.diff(jaccard)))
    assert LovaszSoftmaxLoss()(logits, target).item() == pytest.approx(np.mean(per_class), rel=1e-5)


def _lovasz_sorted_through_autograd(logits, target):
    """The loss as Berman et al. write it: errors sorted with their gradient, background ignored."""
    probs = logits.softmax(dim=1).permute(0, 2, 3, 1)[target != 0]
    labels = target[target != 0]
    per_class = []
    for c in range(1, 5):
        truth = (labels == c).float()
        errors, order = (truth - probs[:, c]).abs().sort(descending=True)
        per_class.append(torch.dot(errors, lovasz_gradient(truth[order])))
    return torch.stack(per_class).mean()


def test_lovasz_value_and_gradient_are_those_of_its_errors_sorted_through_autograd():
    torch.manual_seed(2)
    target = torch.randint(1, 5, (2, 6, 10))
    for tied in (False, True):
        logits = torch.randn(2, 5, 6, 10)
        if tied:
            logits[:, :, :3] = logits[:, :, :1]  # rows 0-2 alike: equal errors, whose order is arbitrary
        ours, theirs = logits.clone().requires_grad_(), logits.clone().requires_grad_()
        value = LovaszSoftmaxLoss()(ours, target)
        reference = _lovasz_sorted_through_autograd(theirs, target)
        value.backward()
        reference.backward()
        assert value.item() == pytest.approx(reference.item(), rel=1e-6)  # ties do not move the value
        if not tied:  # nor, without ties, the gradient, pixel by pixel
            assert torch.allclose(ours.grad, theirs.grad, atol=1e-8)
        else:  # with ties, which of two equal errors comes first is a choice of subgradient
            assert torch.allclose(ours.grad.sum(dim=(2, 3)), theirs.grad.sum(dim=(2, 3)), atol=1e-6)


def test_lovasz_gradient_raises_the_true_class_of_a_missed_pixel():
    target = torch.tensor([[[1, 1, 2, 2]]])
    logits = torch.zeros(1, 5, 1, 4, requires_grad=True)
    LovaszSoftmaxLoss()(logits, target).backward()
    assert (logits.grad[0, 1, 0, :2] < 0).all() and (logits.grad[0, 2, 0, 2:] < 0).all()  # descent raises them
    assert (logits.grad[0, 2, 0, :2] > 0).all()  # and lowers the wrong class there
