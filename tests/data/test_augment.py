import numpy as np
import torch

from marsseg.config import AugmentConfig
from marsseg.data.augment import augment_pair, build_augmentation, crop_around_class
from marsseg.data.dataset import SegmentationDataset

EVERYTHING = AugmentConfig(
    hflip=0.5, vflip=0.5, elastic=1.0, grid_distortion=1.0, clahe=1.0, brightness_contrast=1.0, gamma=1.0
)


def pattern():
    image = np.tile(np.arange(128, dtype=np.uint8) * 2, (64, 1))
    mask = np.zeros((64, 128), np.uint8)
    mask[:, :32], mask[:, 32:64], mask[:, 64:96], mask[:, 96:] = 1, 2, 3, 4
    return image, mask


def test_flip_moves_image_and_mask_together():
    image, mask = pattern()
    pipeline = build_augmentation(AugmentConfig(hflip=1.0, brightness_contrast=0, gamma=0))
    flipped_image, flipped_mask = augment_pair(pipeline, image, mask)
    assert np.array_equal(flipped_image, image[:, ::-1]) and np.array_equal(flipped_mask, mask[:, ::-1])


def test_full_pipeline_keeps_labels_in_range():
    image, mask = pattern()
    pipeline = build_augmentation(EVERYTHING, seed=0)
    for _ in range(30):
        out_image, out_mask = augment_pair(pipeline, image, mask)
        assert out_image.shape == (64, 128) and out_image.dtype == np.uint8
        assert set(np.unique(out_mask)) <= {1, 2, 3, 4}  # nearest resampling invents no label


def test_geometric_transforms_keep_image_and_mask_aligned():
    _, mask = pattern()
    image = mask * 60  # the image encodes the label, so alignment can be read off every pixel
    geometric = AugmentConfig(hflip=0.5, vflip=0.5, elastic=1.0, grid_distortion=1.0, brightness_contrast=0, gamma=0)
    pipeline = build_augmentation(geometric, seed=1)
    for _ in range(20):
        out_image, out_mask = augment_pair(pipeline, image, mask)
        agreement = (np.rint(out_image / 60) == out_mask).mean()
        assert agreement > 0.95  # only pixels on band edges, interpolated in the image, may differ


def test_same_seed_same_augmentations():
    image, mask = pattern()
    first = [augment_pair(build_augmentation(EVERYTHING, seed=4), image, mask)[0] for _ in range(1)]
    second = [augment_pair(build_augmentation(EVERYTHING, seed=4), image, mask)[0] for _ in range(1)]
    assert np.array_equal(first[0], second[0])


def test_dataset_serves_float_images_and_long_masks_with_three_channels():
    image, mask = pattern()
    dataset = SegmentationDataset(image[None], mask[None], np.array([0, 0]), pipeline=None, in_channels=3)
    x, y = dataset[1]
    assert x.shape == (3, 64, 128) and x.dtype == torch.float32 and torch.equal(x[0], x[2])
    assert y.dtype == torch.long and y.shape == (64, 128) and int(y.max()) == 4
    assert -1.0 <= float(x.min()) and float(x.max()) <= 1.0


def test_rare_crop_zooms_on_big_rock_and_keeps_image_and_mask_aligned():
    mask = np.ones((64, 128), np.uint8)
    mask[10:14, 100:108] = 4  # a 4x8 rock near the top-right corner: 32 pixels
    image = mask * 60
    rng = np.random.default_rng(0)
    for _ in range(20):
        out_image, out_mask = crop_around_class(image, mask, rng, min_scale=0.5)
        assert out_image.shape == (64, 128) and out_mask.shape == (64, 128)
        assert set(np.unique(out_mask)) <= {1, 4}
        assert (out_mask == 4).sum() >= 32  # the rock is in the crop, and a crop only enlarges it
        assert (np.rint(out_image / 60) == out_mask).mean() > 0.97  # edges interpolated in the image only
    zoomed = [(crop_around_class(image, mask, rng, min_scale=0.5)[1] == 4).sum() for _ in range(50)]
    assert max(zoomed) > 32 * 2.5  # a crop of half each side makes the rock four times larger
    no_rock = np.ones((64, 128), np.uint8)
    assert crop_around_class(image, no_rock, rng, 0.5)[1] is no_rock  # unchanged without the class


def test_dataset_applies_rare_crops_with_their_probability_and_seed():
    mask = np.ones((64, 128), np.uint8)
    mask[30:34, 60:64] = 4
    images, masks = (mask * 60)[None], mask[None]
    never = SegmentationDataset(images, masks, np.zeros(10, int), rare_crop=0.0)
    assert all(int((never[i][1] == 4).sum()) == 16 for i in range(10))
    always = SegmentationDataset(images, masks, np.zeros(10, int), rare_crop=1.0, rare_crop_min_scale=0.5)
    always.reseed(3)
    first = [int((always[i][1] == 4).sum()) for i in range(10)]
    assert min(first) >= 16 and max(first) > 16
    always.reseed(3)
    assert [int((always[i][1] == 4).sum()) for i in range(10)] == first
    half = SegmentationDataset(images, masks, np.zeros(400, int), rare_crop=0.5)
    half.reseed(5)
    zoomed_share = np.mean([int((half[i][1] == 4).sum()) > 16 for i in range(400)])
    assert 0.4 < zoomed_share < 0.6  # about half (a crop near scale 1 may leave the rock at its size)


def test_zoom_scales_the_crop_within_its_limit_with_the_mask_aligned():
    mask = np.full((64, 128), 2, np.uint8)
    mask[22:42, 54:74] = 4  # a 20 x 20 rock in the middle: its area follows the zoom factor squared
    image = mask * 60
    zoom_only = AugmentConfig(
        hflip=0, zoom=1.0, zoom_limit=0.25, elastic=0, grid_distortion=0, brightness_contrast=0, gamma=0
    )
    pipeline = build_augmentation(zoom_only, seed=3)
    ratios = []
    for _ in range(40):
        out_image, out_mask = augment_pair(pipeline, image, mask)
        assert out_mask.shape == (64, 128) and set(np.unique(out_mask)) <= {2, 4}
        assert (np.rint(out_image / 60) == out_mask).mean() > 0.98  # only the rock's interpolated edge may differ
        ratios.append((out_mask == 4).sum() / 400)
    ratios = np.array(ratios)
    assert ratios.min() > 0.8**2 - 0.1 and ratios.max() < 1.25**2 + 0.1  # factors within 0.8..1.25
    assert (ratios < 0.95).any() and (ratios > 1.05).any()  # both zooming out and in
