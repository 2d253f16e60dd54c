import numpy as np

from marsseg.data.sampling import curriculum_indices, oversample_rare_class, rare_class_sampler


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


def test_curriculum_starts_balanced_and_ends_at_the_oversampled_set():
    masks = masks_with_rare(n=40, rare=(1, 4, 15, 22))
    train = np.arange(40)
    final = oversample_rare_class(train, masks, factor=2)  # 36 common + 8 rare draws = 44
    shares = []
    for epoch in range(5):
        epoch_indices = curriculum_indices(train, masks, 2, epoch, curriculum_epochs=4, seed=epoch)
        assert len(epoch_indices) == len(final)
        rare_draws = np.isin(epoch_indices, [1, 4, 15, 22])
        shares.append(rare_draws.mean())
        counts = np.bincount(epoch_indices[rare_draws], minlength=40)[[1, 4, 15, 22]]
        assert counts.max() - counts.min() <= 1  # every big-rock image equally often
        assert np.bincount(epoch_indices[~rare_draws]).max() == 1  # other images at most once
    # 22/44 = 0.5 at the start; 8/44 at the end; linear in between (rounded to whole draws)
    assert shares[0] == 0.5 and bool(np.all(np.diff(shares) < 0))
    assert shares[2] == round((0.5 + 8 / 44) / 2 * 44) / 44
    assert np.array_equal(curriculum_indices(train, masks, 2, 4, 4, seed=9), final)
    same = curriculum_indices(train, masks, 2, 1, 4, seed=3), curriculum_indices(train, masks, 2, 1, 4, seed=3)
    assert np.array_equal(*same)
    assert np.array_equal(curriculum_indices(train, masks, 2, 0, 0, seed=3), final)  # off
