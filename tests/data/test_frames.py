import numpy as np

from marsseg.data.frames import whole_frame_units


def test_whole_frame_units_join_pairs_and_centre_the_other_crops():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 4, 3), dtype=np.uint8)
    masks = rng.integers(1, 5, (6, 4, 3), dtype=np.uint8)
    below = np.array([3, -1, -1, -1, 5, -1])  # frames: 0 above 3, 4 above 5
    unit_images, unit_masks = whole_frame_units(images, masks, below)
    assert unit_images.shape == unit_masks.shape == (4, 8, 3)
    assert np.array_equal(unit_images[0], np.concatenate([images[0], images[3]]))
    assert np.array_equal(unit_masks[0], np.concatenate([masks[0], masks[3]]))
    assert np.array_equal(unit_images[1], np.concatenate([images[4], images[5]]))
    for unit, crop in ((2, 1), (3, 2)):  # alone: in rows 2..5, mirrored around, mask 0 there
        assert np.array_equal(unit_images[unit, 2:6], images[crop]) and np.array_equal(
            unit_masks[unit, 2:6], masks[crop]
        )
        assert np.array_equal(unit_images[unit, 1], images[crop, 1]) and np.array_equal(
            unit_images[unit, 6], images[crop, 2]
        )
        assert (unit_masks[unit, :2] == 0).all() and (unit_masks[unit, 6:] == 0).all()
