import numpy as np

from marsseg.data.sampling import oversample_rare_class, rare_class_sampler


def masks_with_rare(n=20, rare=(1, 4, 15)):
    masks = np.ones((n, 8, 8), np.uint8)
    for i in rare:
        masks[i, 0, 0] = 4
    return masks


def test_oversampling_repeats_rare_images_of_the_training_part_only():
    masks = masks_with_rare()
    train = np.array([0, 1, 2, 3, 4, 5])  # 15 is rare but not in the training part
    result = oversample_rare_class(train, masks, factor=4)
    counts = np.bincount(result, minlength=20)
    assert counts[1] == 4 and counts[4] == 4 and counts[0] == 1 and counts[15] == 0
    assert len(result) == 6 + 2 * 3
    assert np.array_equal(oversample_rare_class(train, masks, factor=1), train)


def test_weighted_sampler_draws_rare_images_more_often():
    masks = masks_with_rare()
    train = np.arange(20)
    sampler = rare_class_sampler(train, masks, factor=5.0, seed=0)
    draws = np.array([i for _ in range(200) for i in sampler])
    rare_share = np.isin(draws, [1, 4, 15]).mean()
    # expected share 15 / (15 + 17) = 0.47 versus 0.15 without weighting
    assert 0.4 < rare_share < 0.54
    assert list(rare_class_sampler(train, masks, 5.0, seed=0)) == list(rare_class_sampler(train, masks, 5.0, seed=0))
