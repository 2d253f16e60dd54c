import numpy as np
import torch

from marsseg.data.dataset import SegmentationDataset
from marsseg.data.mixing import class_components, cutmix, cutmix_box, frame_window, paste_components


def rock_crop():
    """A soil crop (label 1, gray 10) with two big rocks (label 4): a 3x5 block of gray 200 and a 1-pixel speck."""
    image = np.full((64, 128), 10, np.uint8)
    mask = np.ones((64, 128), np.uint8)
    image[20:23, 40:45], mask[20:23, 40:45] = 200, 4
    image[50, 100], mask[50, 100] = 201, 4
    return image, mask


def test_components_are_the_connected_rare_regions_above_the_size_floor():
    image, mask = rock_crop()
    plain = np.ones_like(mask)
    images, masks = np.stack([image, image * 0, image]), np.stack([mask, plain, mask])
    components = class_components(images, masks, np.array([0, 1, 1]), min_pixels=4)
    assert len(components) == 1  # the speck is below the floor; crop 2 is not in the indices
    assert components[0].inside.shape == (3, 5) and components[0].inside.all()
    assert (components[0].image == 200).all()
    assert len(class_components(images, masks, np.array([0, 2]), min_pixels=1)) == 4  # 2 per crop, speck included


def test_paste_adds_the_rock_pixels_and_labels_together_and_nothing_else():
    image, mask = rock_crop()
    components = class_components(image[None], mask[None], np.array([0]))
    target_image, target_mask = np.full((64, 128), 90, np.uint8), np.full((64, 128), 2, np.uint8)
    rng = np.random.default_rng(0)
    pasted_image, pasted_mask = paste_components(target_image, target_mask, components, rng, 1, scale_range=(1, 1))
    assert (target_mask == 2).all() and (target_image == 90).all()  # the inputs are untouched
    assert (pasted_mask == 4).sum() == 15  # the 3x5 rock, unscaled
    assert np.array_equal(pasted_mask == 4, pasted_image == 200)  # every label moved with its pixel
    assert np.array_equal(pasted_mask[pasted_mask != 4], target_mask[pasted_mask != 4])
    rows, cols = np.nonzero(pasted_mask == 4)
    assert np.ptp(rows) == 2 and np.ptp(cols) == 4  # one block, not scattered
    doubled = paste_components(target_image, target_mask, components, np.random.default_rng(1), 1, scale_range=(2, 2))[
        1
    ]
    assert (doubled == 4).sum() == 60  # scaled 2x on each side
    assert paste_components(target_image, target_mask, [], rng, 3)[1].tolist() == target_mask.tolist()


def test_cutmix_replaces_one_box_of_image_and_mask_with_the_other_crops():
    image, mask = np.zeros((64, 128), np.uint8), np.ones((64, 128), np.uint8)
    other_image, other_mask = np.full((64, 128), 255, np.uint8), np.full((64, 128), 3, np.uint8)
    shares = []
    for seed in range(50):
        mixed_image, mixed_mask = cutmix(image, mask, other_image, other_mask, np.random.default_rng(seed))
        assert np.array_equal(mixed_image == 255, mixed_mask == 3)
        rows, cols = np.nonzero(mixed_mask == 3)
        assert (np.ptp(rows) + 1) * (np.ptp(cols) + 1) == len(rows)  # a filled rectangle
        shares.append(len(rows) / mask.size)
    assert 0.09 <= min(shares) and max(shares) <= 0.51 and np.std(shares) > 0.05
    box = cutmix_box(64, 128, np.random.default_rng(0))
    assert box[0].stop <= 64 and box[1].stop <= 128


def test_dataset_pastes_and_mixes_with_their_probabilities_and_seed():
    image, mask = rock_crop()
    plain_image, plain_mask = np.full((64, 128), 90, np.uint8), np.full((64, 128), 2, np.uint8)
    images, masks = np.stack([image, plain_image]), np.stack([mask, plain_mask])
    indices = np.array([0] + [1] * 199)
    never = SegmentationDataset(images, masks, indices)
    assert sum(int((never[i][1] == 4).sum()) for i in range(1, 200)) == 0
    always = SegmentationDataset(images, masks, indices, copy_paste=1.0, copy_paste_count=2)
    always.reseed(4)
    rock_pixels = [int((always[i][1] == 4).sum()) for i in range(1, 200)]
    assert min(rock_pixels) > 0  # every plain crop got a rock, from crop 0's component
    assert max(rock_pixels) > 20  # and some two of them (15 pixels each before scaling)
    always.reseed(4)
    assert [int((always[i][1] == 4).sum()) for i in range(1, 200)] == rock_pixels
    half = SegmentationDataset(images, masks, indices, copy_paste=0.5)
    half.reseed(0)
    pasted = np.mean([(half[i][1] == 4).any() for i in range(1, 200)])
    assert 0.4 < pasted < 0.6
    mixing = SegmentationDataset(images, masks, np.array([0, 1] * 100), cutmix=1.0)
    mixing.reseed(0)
    mixed = [np.unique(mixing[i][1].numpy()).tolist() for i in range(1, 200, 2)]  # plain crops (label 2)
    assert np.mean([1 in labels for labels in mixed]) > 0.3  # boxes of crop 0's soil in about half


def numbered_frame():
    """A frame's two halves whose pixels hold their row in the frame (0..127), masks their half (1 top, 2 bottom)."""
    rows = np.repeat(np.arange(128, dtype=np.uint8)[:, None], 128, axis=1)
    halves = np.ones((128, 128), np.uint8)
    halves[64:] = 2
    return (rows[:64], halves[:64]), (rows[64:], halves[64:])


def test_frame_window_is_a_window_of_the_joined_frame_between_its_halves():
    top, bottom = numbered_frame()
    starts = []
    for seed in range(300):
        image, mask = frame_window(top, bottom, np.random.default_rng(seed))
        start = int(image[0, 0])
        assert image.shape == (64, 128) and mask.shape == (64, 128)
        assert (image == np.arange(start, start + 64, dtype=np.uint8)[:, None]).all()  # 64 consecutive frame rows
        assert np.array_equal(mask == 2, image >= 64)  # each label stayed with its pixel
        starts.append(start)
    assert min(starts) == 1 and max(starts) == 63  # always rows of both halves, every height drawn
    assert (top[0] == np.arange(64)[:, None]).all()  # the inputs are untouched


def first_gray(served) -> int:
    """The gray value of a served crop's first pixel (the dataset scales 0..255 to about -1..1)."""
    return int(round(float(served[0][0, 0, 0]) * 127.5 + 127.5))


def test_dataset_shifts_only_crops_whose_frame_partner_it_was_given():
    top, bottom = numbered_frame()
    lone = np.full((64, 128), 200, np.uint8), np.full((64, 128), 3, np.uint8)
    images, masks = np.stack([top[0], lone[0], bottom[0]]), np.stack([top[1], lone[1], bottom[1]])
    below = np.array([2, -1, -1])  # crop 2 is under crop 0
    indices = np.array([0, 1, 2] * 100)
    shifting = SegmentationDataset(images, masks, indices, frame_shift=1.0, below=below)
    shifting.reseed(0)
    served = [shifting[i] for i in range(len(indices))]
    firsts = [first_gray(item) for item in served]  # the first row of the frame the window starts at
    assert all(1 <= first <= 63 for first in firsts[0::3] + firsts[2::3])  # both halves served as windows
    assert len(set(firsts[0::3])) > 20
    assert all(torch.equal(y, torch.full((64, 128), 3)) for _, y in served[1::3])  # the lone crop as it was
    for (_, y), first in zip(served, firsts, strict=True):
        if first < 64:
            assert torch.equal(y == 2, torch.arange(first, first + 64)[:, None].expand(64, 128) >= 64)
    unshifted = SegmentationDataset(images, masks, indices, frame_shift=0.0, below=below)
    assert [first_gray(unshifted[i]) for i in range(3)] == [0, 200, 64]
    half = SegmentationDataset(images, masks, indices, frame_shift=0.5, below=below)
    half.reseed(1)
    shifted = np.mean([first_gray(half[i]) != 0 for i in range(0, 300, 3)])
    assert 0.35 < shifted < 0.65
    shifting.reseed(0)
    assert [first_gray(shifting[i]) for i in range(len(indices))] == firsts
