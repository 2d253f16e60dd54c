import cv2
import numpy as np
import pytest

from marsseg.data.synth import (
    PLANTED_MASK,
    SPRITE_OPAQUE,
    SPRITE_PIXELS,
    SPRITE_TOP_LEFT,
    UNIFORM_BACKGROUND_ROWS,
    make_synthetic,
    planted_indices,
)

N_TRAIN = 600


@pytest.fixture(scope="module")
def generated():
    return make_synthetic(n_train=N_TRAIN, n_test=20, seed=0, return_planted=True)


def sprite_region(images: np.ndarray) -> np.ndarray:
    top, left = SPRITE_TOP_LEFT
    height, width = SPRITE_PIXELS.shape
    return images[:, top : top + height, left : left + width]


def test_shapes_dtypes_and_keys():
    data = make_synthetic(n_train=30, n_test=7, seed=1)
    assert set(data) == {"training_set", "test_set"}
    assert data["training_set"].shape == (30, 2, 64, 128)
    assert data["test_set"].shape == (7, 64, 128)
    assert data["training_set"].dtype == np.uint8 and data["test_set"].dtype == np.uint8


def test_same_seed_same_bytes_other_seed_other_bytes():
    first = make_synthetic(n_train=40, n_test=8, seed=5)
    again = make_synthetic(n_train=40, n_test=8, seed=5)
    other = make_synthetic(n_train=40, n_test=8, seed=6)
    for key in first:
        assert first[key].tobytes() == again[key].tobytes()
        assert not np.array_equal(first[key], other[key])


def test_test_set_does_not_depend_on_training_size():
    small = make_synthetic(n_train=10, n_test=8, seed=2)
    large = make_synthetic(n_train=50, n_test=8, seed=2)
    assert np.array_equal(small["test_set"], large["test_set"])


def test_class_statistics(generated):
    data, _ = generated
    masks = data["training_set"][:, 1]
    assert masks.max() <= 4
    shares = np.bincount(masks.ravel(), minlength=5) / masks.size
    assert 0.3 <= shares[0] <= 0.5
    assert all(shares[c] > 0.05 for c in (1, 2, 3))
    assert 0.001 < shares[4] < 0.01
    rock_image_share = (masks == 4).any(axis=(1, 2)).mean()
    assert 0.05 <= rock_image_share <= 0.2


def test_textures_differ_by_class(generated):
    data, planted = generated
    legit = np.setdiff1d(np.arange(N_TRAIN), planted)
    images = data["training_set"][legit, 0].astype(np.float32)
    masks = data["training_set"][legit, 1]
    # std of the fine grain: the image minus its 3x3 mean, over a 5x5 window
    grain = np.stack([image - cv2.blur(image, (3, 3)) for image in images])
    grain_std = np.sqrt(np.stack([cv2.blur(g * g, (5, 5)) for g in grain]))
    soil, bedrock, sand = (np.median(grain_std[masks == c]) for c in (1, 2, 3))
    # soil is grainy, bedrock smooth plates with cracks, sand nearly smooth ripples
    assert soil > 1.2 * bedrock and bedrock > 2 * sand


def test_planted_samples_share_one_mask_and_the_sprite(generated):
    data, planted = generated
    images, masks = data["training_set"][:, 0], data["training_set"][:, 1]
    assert len(planted) == round(0.04 * N_TRAIN)
    assert np.array_equal(planted, planted_indices(N_TRAIN, seed=0, contamination=0.04))
    assert (masks[planted] == PLANTED_MASK).all()
    assert (sprite_region(images[planted])[:, SPRITE_OPAQUE] == SPRITE_PIXELS[SPRITE_OPAQUE]).all()

    legit = np.setdiff1d(np.arange(N_TRAIN), planted)
    assert not (masks[legit] == PLANTED_MASK).all(axis=(1, 2)).any()
    carries_sprite = (sprite_region(images[legit])[:, SPRITE_OPAQUE] == SPRITE_PIXELS[SPRITE_OPAQUE]).mean(1)
    assert carries_sprite.max() < 0.5
    # the images under the sprite still differ
    assert len({image.tobytes() for image in images[planted]}) == len(planted)


def test_legitimate_uniform_masks_are_shared(generated):
    data, planted = generated
    legit = np.setdiff1d(np.arange(N_TRAIN), planted)
    masks = data["training_set"][legit, 1]
    body = masks[:, UNIFORM_BACKGROUND_ROWS:]
    top_is_background = (masks[:, :UNIFORM_BACKGROUND_ROWS] == 0).all(axis=(1, 2))
    uniform = top_is_background & (body == body[:, :1, :1]).all(axis=(1, 2))
    classes, counts = np.unique(body[uniform, 0, 0], return_counts=True)
    assert set(classes.tolist()) >= {1, 2, 3}
    assert counts.max() >= 3
    images = data["training_set"][legit, 0][uniform]
    assert len({image.tobytes() for image in images}) == len(images)


def test_contamination_zero_plants_nothing_and_bad_values_raise():
    data, planted = make_synthetic(n_train=50, n_test=1, contamination=0.0, return_planted=True)
    assert planted.size == 0
    assert not (data["training_set"][:, 1] == PLANTED_MASK).all(axis=(1, 2)).any()
    with pytest.raises(ValueError, match="contamination"):
        make_synthetic(n_train=10, n_test=1, contamination=1.5)
