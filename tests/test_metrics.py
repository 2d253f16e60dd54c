import numpy as np
import pytest
import torch

from marsseg.metrics import (
    bootstrap_miou_difference,
    bootstrap_miou_interval,
    confusion_matrices_per_image,
    confusion_matrix,
    iou_per_class,
    mean_iou,
)


def test_hand_worked_example_ignores_background():
    true = torch.tensor([0, 0, 1, 1, 2, 2, 3])
    pred = torch.tensor([1, 3, 1, 2, 2, 2, 4])
    matrix = confusion_matrix(true, pred)
    assert matrix.sum() == 7 and matrix[1, 2] == 1 and matrix[0, 3] == 1
    # soil: TP 1, FN 1 (the predicted-1 pixel with true 0 does not count) -> 1/2
    # bedrock: TP 2, FP 1 -> 2/3; sand: FN 1 (the predicted-3 pixel on background is ignored) -> 0; big rock: FP 1 -> 0
    assert iou_per_class(matrix) == pytest.approx([0.5, 2 / 3, 0.0, 0.0])
    assert mean_iou(matrix) == pytest.approx((0.5 + 2 / 3) / 4)


def test_class_absent_and_never_predicted_is_skipped():
    true = torch.tensor([[1, 1], [2, 0]])
    pred = torch.tensor([[1, 1], [2, 4]])  # the 4 sits on background: ignored
    ious = iou_per_class(confusion_matrix(true, pred))
    assert ious[:2].tolist() == [1.0, 1.0] and np.isnan(ious[2]) and np.isnan(ious[3])
    assert mean_iou(confusion_matrix(true, pred)) == 1.0


def test_one_matrix_over_the_whole_set_is_not_a_mean_of_images():
    true = [torch.tensor([1, 1, 1, 1]), torch.tensor([2, 2, 2, 2])]
    pred = [torch.tensor([1, 1, 1, 1]), torch.tensor([2, 2, 2, 1])]
    total = confusion_matrix(true[0], pred[0]) + confusion_matrix(true[1], pred[1])
    assert iou_per_class(total)[:2] == pytest.approx([4 / 5, 3 / 4])


def test_only_background_gives_nan():
    assert np.isnan(mean_iou(confusion_matrix(torch.zeros(4), torch.ones(4))))


def test_per_image_matrices_sum_to_the_batch_matrix():
    generator = torch.Generator().manual_seed(0)
    true = torch.randint(0, 5, (3, 4, 6), generator=generator)
    pred = torch.randint(1, 5, (3, 4, 6), generator=generator)
    per_image = confusion_matrices_per_image(true, pred)
    assert per_image.shape == (3, 5, 5)
    for i in range(3):
        assert torch.equal(per_image[i], confusion_matrix(true[i], pred[i]))
    assert torch.equal(per_image.sum(dim=0), confusion_matrix(true, pred))


def test_bootstrap_resamples_whole_groups():
    # Two images that are each other's complement: image a right on soil and wrong on bedrock, image b the
    # reverse. Together (one frame) they always give the same mIoU; drawn apart, the score varies.
    a = np.zeros((5, 5), dtype=np.int64)
    a[1, 1], a[2, 1] = 10, 10  # soil right, bedrock called soil
    b = np.zeros((5, 5), dtype=np.int64)
    b[2, 2], b[1, 2] = 10, 10
    matrices = np.stack([a, b] * 8)
    frames = np.repeat(np.arange(8), 2)  # a and b of one frame together
    low, high = bootstrap_miou_interval(matrices, frames, draws=200)
    assert low == pytest.approx(mean_iou(matrices.sum(axis=0))) and high == pytest.approx(low)
    low, high = bootstrap_miou_interval(matrices, np.arange(16), draws=200)  # every image on its own
    # an unequal draw of a's and b's only lowers mIoU (1/3 is the balanced maximum)
    assert low < mean_iou(matrices.sum(axis=0)) - 0.01 and high == pytest.approx(1 / 3)
    assert bootstrap_miou_interval(matrices, np.arange(16), draws=200) == (low, high)  # seeded


def test_paired_bootstrap_difference_of_two_predictions_of_the_same_images():
    rng = np.random.default_rng(0)
    baseline = np.zeros((40, 5, 5), dtype=np.int64)
    better = np.zeros((40, 5, 5), dtype=np.int64)
    for i in range(40):
        label = 1 + i % 4
        baseline[i, label, label], baseline[i, label, 1 + (i + 1) % 4] = 60, 40  # 60 % right
        better[i, label, label], better[i, label, 1 + (i + 1) % 4] = 80, 20  # 80 % right
        better[i] += rng.integers(0, 2, (5, 5))  # a little noise, so draws differ
    groups = np.arange(40) // 2
    difference, low, high = bootstrap_miou_difference(better, baseline, groups, draws=300)
    assert difference == pytest.approx(mean_iou(better.sum(0)) - mean_iou(baseline.sum(0)))
    assert 0 < low <= difference <= high
    assert bootstrap_miou_difference(baseline, baseline, groups, draws=300) == (0.0, 0.0, 0.0)
