"""Synthetic Mars terrain crops: the embedded default data set, laid out like the course data.

Each image is a few textured regions (soil, bedrock, sand), sometimes a sky band and unlabeled patches, and
in about 10 % of images some shaded big rocks. About 5 % of masks are uniform (one class, or no label at all)
and shared by many samples. A `contamination` share of training samples is planted: an alien-face sprite
over a normal image, all with one identical bogus mask, mimicking the corrupted samples of the course data.
"""

import cv2
import numpy as np

HEIGHT, WIDTH = 64, 128
BACKGROUND, SOIL, BEDROCK, SAND, BIG_ROCK = 0, 1, 2, 3, 4

UNIFORM_SHARE = 0.05  # images with one class everywhere except the top UNIFORM_BACKGROUND_ROWS rows
UNIFORM_BACKGROUND_ROWS = 2
UNIFORM_CLASSES, UNIFORM_CLASS_ODDS = [BACKGROUND, SOIL, BEDROCK, SAND], [0.2, 0.3, 0.3, 0.2]
ROCK_IMAGE_SHARE = 0.11  # of non-uniform images, so about 10 % of all
SKY_SHARE = 0.5
PATCH_SHARE = 0.7  # images with unlabeled patches
CHUNK = 256  # images rendered at once; bounds memory

_ROWS = np.arange(HEIGHT, dtype=np.float32)[:, None]
_COLS = np.arange(WIDTH, dtype=np.float32)[None, :]


def _make_sprite() -> tuple[np.ndarray, np.ndarray]:
    """A 36x40 cartoon alien face: light shaded disc, two dark eyes, a dark mouth."""
    rows, cols = np.mgrid[0:36, 0:40].astype(np.float32)
    radius2 = ((rows - 17.5) / 18) ** 2 + ((cols - 19.5) / 20) ** 2
    opaque = radius2 < 1
    pixels = np.where(opaque, 240 - 30 * radius2, 0)
    for eye_col in (12.5, 26.5):
        pixels[((rows - 13) / 4) ** 2 + ((cols - eye_col) / 3) ** 2 < 1] = 25
    mouth_r2 = ((rows - 20) / 9) ** 2 + ((cols - 19.5) / 10) ** 2
    pixels[(mouth_r2 > 0.75) & (mouth_r2 < 1) & (rows > 22)] = 25
    return pixels.astype(np.uint8), opaque


SPRITE_PIXELS, SPRITE_OPAQUE = _make_sprite()
SPRITE_TOP_LEFT = ((HEIGHT - SPRITE_PIXELS.shape[0]) // 2, (WIDTH - SPRITE_PIXELS.shape[1]) // 2)

# The bogus mask of every planted sample: bedrock everywhere except a background band at the bottom. No
# legitimate sample has it (legitimate uniform masks have their background band at the top).
PLANTED_MASK = np.full((HEIGHT, WIDTH), BEDROCK, dtype=np.uint8)
PLANTED_MASK[-8:] = BACKGROUND


def _smooth_noise(rng: np.random.Generator, count: int, grid: tuple[int, int]) -> np.ndarray:
    """(count, H, W) low-frequency fields of about unit std: coarse random grids upsampled with cubics."""
    coarse = rng.standard_normal((count, *grid), dtype=np.float32)
    fields = np.stack([cv2.resize(c, (WIDTH, HEIGHT), interpolation=cv2.INTER_CUBIC) for c in coarse])
    return fields / (fields.std() + 1e-6)


def _fine_noise(rng: np.random.Generator, count: int, sigma: float) -> np.ndarray:
    """(count, H, W) slightly blurred white noise of unit std (grain)."""
    noise = rng.standard_normal((count * HEIGHT, WIDTH), dtype=np.float32)
    noise = cv2.GaussianBlur(noise, (0, 0), sigma).reshape(count, HEIGHT, WIDTH)
    return noise / noise.std()


def _soil(rng: np.random.Generator, count: int) -> np.ndarray:
    """Mid-gray fine grain with mild mottling."""
    return 120 + 22 * _fine_noise(rng, count, 0.7) + 8 * _smooth_noise(rng, count, (8, 16))


def _bedrock(rng: np.random.Generator, count: int) -> np.ndarray:
    """Bright plates of differing tone separated by dark crack lines."""
    f1, f2 = _smooth_noise(rng, count, (5, 10)), _smooth_noise(rng, count, (4, 8))
    plates = 12 * np.sign(f1) + 7 * np.sign(f2)
    cracks = np.exp(-((f1 / 0.12) ** 2)) + np.exp(-((f2 / 0.12) ** 2))
    return 165 + plates - 75 * np.minimum(cracks, 1) + 5 * _fine_noise(rng, count, 0.7)


def _sand(rng: np.random.Generator, count: int) -> np.ndarray:
    """Darker, smooth, with gently warped ripple stripes."""
    angle = rng.uniform(np.pi / 2 - 0.6, np.pi / 2 + 0.6, (count, 1, 1))  # near-horizontal stripes
    period = rng.uniform(5, 9, (count, 1, 1))
    phase = rng.uniform(0, 2 * np.pi, (count, 1, 1))
    along = _COLS * np.cos(angle) + _ROWS * np.sin(angle)
    warp = 1.5 * _smooth_noise(rng, count, (3, 6))
    ripples = np.sin(2 * np.pi * along / period + phase + warp)
    return 95 + 11 * ripples + 2.5 * _fine_noise(rng, count, 1.0)


def _draw_rocks(rng: np.random.Generator, image: np.ndarray, mask: np.ndarray, top_row: float) -> None:
    """Draws 2-6 shaded rocks (lit side, dark cast shadow) below `top_row`, labelling them big rock."""
    light_angle = rng.uniform(0, 2 * np.pi)
    light_col, light_row = np.cos(light_angle), np.sin(light_angle)
    for _ in range(rng.integers(2, 7)):
        semi_w = rng.uniform(3, 10)
        semi_h = semi_w * rng.uniform(0.55, 0.9)
        center_row = rng.uniform(min(top_row + semi_h, HEIGHT - 2), HEIGHT - 1)
        center_col = rng.uniform(semi_w, WIDTH - 1 - semi_w)
        dx, dy = (_COLS - center_col) / semi_w, (_ROWS - center_row) / semi_h
        inside = dx**2 + dy**2 < 1
        shadow = (dx + 0.7 * light_col) ** 2 + (dy + 0.7 * light_row) ** 2 < 1
        image[shadow & ~inside] *= 0.45
        shade = rng.uniform(125, 165) + 55 * (dx * light_col + dy * light_row)
        image[inside] = (shade + rng.normal(0, 5, shade.shape))[inside]
        mask[inside] = BIG_ROCK


def _render_chunk(rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Renders `count` images and masks, each (count, H, W) uint8."""
    fields = _smooth_noise(rng, 3 * count, (3, 5)).reshape(count, 3, HEIGHT, WIDTH)
    class_bias = np.array([0.3, 0.0, -0.1], np.float32)[:, None, None] + rng.normal(0, 0.6, (count, 3, 1, 1))
    mask = (fields + class_bias).argmax(1).astype(np.uint8) + SOIL
    # Uniform masks: one class everywhere but a top band, or (like many real crops) no label at all.
    uniform = rng.random(count) < UNIFORM_SHARE
    uniform_class = rng.choice(UNIFORM_CLASSES, count, p=UNIFORM_CLASS_ODDS)
    textured_uniform = uniform & (uniform_class != BACKGROUND)
    mask[textured_uniform] = uniform_class[textured_uniform, None, None]

    textures = np.stack([_soil(rng, count), _bedrock(rng, count), _sand(rng, count)], axis=1)
    image = np.take_along_axis(textures, (mask - SOIL)[:, None].astype(np.intp), axis=1)[:, 0]

    # Sky above a wavy horizon, then an unlabeled strip of far terrain below it.
    has_sky = (rng.random(count) < SKY_SHARE) & ~uniform
    coarse_wiggle = rng.standard_normal((count, 6), dtype=np.float32)
    wiggle = cv2.resize(coarse_wiggle, (WIDTH, count), interpolation=cv2.INTER_CUBIC)
    horizon = np.where(has_sky, rng.uniform(8, 30, count), 0)[:, None] + 3 * has_sky[:, None] * wiggle
    far_strip = horizon + has_sky[:, None] * rng.uniform(0, 10, (count, 1))
    sky = _ROWS < horizon[:, None, :]
    unlabeled = _ROWS < far_strip[:, None, :]

    # Unlabeled patches: the lowest `share` of a smooth field, per image.
    has_patch = (rng.random(count) < PATCH_SHARE) & ~uniform
    patch_share = np.where(has_patch, rng.uniform(0.15, 0.7, count), 0)
    patch_field = _smooth_noise(rng, count, (3, 6)).reshape(count, -1)
    ranks = np.sort(patch_field, axis=1)
    threshold = ranks[np.arange(count), (patch_share * (HEIGHT * WIDTH - 1)).astype(int)]
    unlabeled |= (patch_field < threshold[:, None]).reshape(count, HEIGHT, WIDTH) & has_patch[:, None, None]
    mask[unlabeled] = BACKGROUND

    has_rocks = (rng.random(count) < ROCK_IMAGE_SHARE) & ~uniform
    for i in np.flatnonzero(has_rocks):
        _draw_rocks(rng, image[i], mask[i], far_strip[i].max())

    # Global brightness and contrast, so that intensity alone is not a perfect cue.
    contrast = rng.uniform(0.75, 1.3, (count, 1, 1))
    image = 128 + contrast * (image - 128) + rng.uniform(-25, 25, (count, 1, 1))
    sky_tone = rng.uniform(165, 225, (count, 1, 1)) - 25 * _ROWS / HEIGHT + rng.normal(0, 1, image.shape)
    image = np.where(sky, sky_tone, image)
    mask[uniform, :UNIFORM_BACKGROUND_ROWS] = BACKGROUND
    mask[uniform & (uniform_class == BACKGROUND)] = BACKGROUND
    return np.clip(image + 0.5, 0, 255).astype(np.uint8), mask


def _render(rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
    images = np.empty((count, HEIGHT, WIDTH), np.uint8)
    masks = np.empty((count, HEIGHT, WIDTH), np.uint8)
    for start in range(0, count, CHUNK):
        stop = min(start + CHUNK, count)
        images[start:stop], masks[start:stop] = _render_chunk(rng, stop - start)
    return images, masks


def planted_indices(n_train: int, *, seed: int = 0, contamination: float = 0.04) -> np.ndarray:
    """Sorted training indices that `make_synthetic` plants with the sprite and the bogus mask."""
    if not 0 <= contamination < 1:
        raise ValueError(f"contamination must be in [0, 1), got {contamination}")
    count = round(contamination * n_train)
    return np.sort(np.random.default_rng([seed, 2]).choice(n_train, count, replace=False))


def make_synthetic(
    n_train: int = 2615,
    *,
    n_test: int = 1000,
    seed: int = 0,
    contamination: float = 0.04,
    return_planted: bool = False,
) -> dict[str, np.ndarray] | tuple[dict[str, np.ndarray], np.ndarray]:
    """Generates the synthetic data set, deterministically from `seed`.

    Args:
        n_train: number of training samples.
        n_test: number of test images.
        seed: non-negative seed; the same arguments give the same bytes.
        contamination: share of training samples planted with the sprite and the bogus mask.
        return_planted: also return the planted training indices.

    Returns:
        {"training_set": uint8 (n_train, 2, 64, 128), image then mask, "test_set": uint8 (n_test, 64, 128)},
        and the sorted planted indices when `return_planted` is set.
    """
    if n_train < 0 or n_test < 0:
        raise ValueError(f"n_train and n_test must be >= 0, got {n_train} and {n_test}")
    planted = planted_indices(n_train, seed=seed, contamination=contamination)
    train_images, train_masks = _render(np.random.default_rng([seed, 0]), n_train)
    test_images, _ = _render(np.random.default_rng([seed, 1]), n_test)

    top, left = SPRITE_TOP_LEFT
    box = (slice(top, top + SPRITE_PIXELS.shape[0]), slice(left, left + SPRITE_PIXELS.shape[1]))
    for i in planted:
        region = train_images[i][box]
        region[SPRITE_OPAQUE] = SPRITE_PIXELS[SPRITE_OPAQUE]
        train_masks[i] = PLANTED_MASK

    data = {"training_set": np.stack([train_images, train_masks], axis=1), "test_set": test_images}
    return (data, planted) if return_planted else data
