import numpy as np
import pytest

from marsseg.data.io import MarsData
from marsseg.data.split import Split, frame_halves, frames_among, group_ids, kfold_splits, split_data
from tests.frames import shuffled_halves


def synthetic_set(n=300, seed=0, frame_ids=None):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 64, 128), dtype=np.uint8)
    masks = rng.integers(1, 4, (n, 64, 128), dtype=np.uint8)
    masks[: n // 10, :5, :5] = 4  # 10 % of images contain big rock
    return MarsData(images, masks, None, frame_ids)


def test_parts_are_disjoint_cover_everything_and_repeat_with_seed():
    data = synthetic_set()
    split = split_data(data, val_fraction=0.1, test_fraction=0.1, seed=1)
    parts = [set(split.train.tolist()), set(split.val.tolist()), set(split.test.tolist())]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert set.union(*parts) == set(range(len(data)))
    assert 20 <= len(split.val) <= 40 and 20 <= len(split.test) <= 40
    again = split_data(data, val_fraction=0.1, test_fraction=0.1, seed=1)
    assert np.array_equal(again.val, split.val) and np.array_equal(again.test, split.test)
    assert not np.array_equal(split_data(data, val_fraction=0.1, test_fraction=0.1, seed=2).val, split.val)


def test_stratified_big_rock_lands_in_every_part():
    data = synthetic_set()
    split = split_data(data, val_fraction=0.1, test_fraction=0.1, seed=0)
    rare = (data.masks == 4).any(axis=(1, 2))
    counts = [int(rare[getattr(split, p)].sum()) for p in ("train", "val", "test")]
    assert counts[1] >= 2 and counts[2] >= 2 and sum(counts) == 30 and counts[0] >= 20


def test_duplicates_near_duplicates_and_frames_never_straddle():
    frames = np.arange(300) // 2  # consecutive pairs are two halves of one frame
    data = synthetic_set(frame_ids=frames)
    data.images[100] = data.images[7]  # exact duplicate
    for copy, original, seed in ((201, 50, 0), (202, 60, 1), (203, 70, 2)):  # near duplicates: noise of std 3
        noisy = data.images[original].astype(float) + np.random.default_rng(seed).normal(0, 3, (64, 128))
        data.images[copy] = np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
    groups = group_ids(data)
    assert groups[100] == groups[7] and groups[10] == groups[11]
    assert groups[201] == groups[50] and groups[202] == groups[60] and groups[203] == groups[70]
    assert len(np.unique(groups)) >= 140  # nothing else merged: 150 frames less the 4 copies
    for seed in range(5):
        split = split_data(data, val_fraction=0.2, test_fraction=0.2, seed=seed)
        part = np.empty(len(data), dtype=object)
        for name in ("train", "val", "test"):
            part[getattr(split, name)] = name
        assert part[100] == part[7] and part[201] == part[50]
        assert all(part[2 * k] == part[2 * k + 1] for k in range(150))


def test_split_saves_and_loads(tmp_path):
    split = split_data(synthetic_set(), val_fraction=0.1, test_fraction=0.1, seed=0)
    split.save(tmp_path / "split.json")
    loaded = Split.load(tmp_path / "split.json")
    assert all(np.array_equal(getattr(loaded, p), getattr(split, p)) for p in ("train", "val", "test"))


def test_halves_of_one_frame_are_found_by_their_seam_and_kept_together():
    images, frame_of = shuffled_halves(40)
    data = MarsData(images, np.ones_like(images), None, None)
    groups = group_ids(data)
    together = sum(groups[a] == groups[b] for a in range(80) for b in range(a + 1, 80) if frame_of[a] == frame_of[b])
    assert together >= 36  # of 40 frames
    wrong = sum(groups[a] == groups[b] for a in range(80) for b in range(a + 1, 80) if frame_of[a] != frame_of[b])
    assert wrong <= 4
    assert len(np.unique(group_ids(data, infer_frames=False))) == 80


def test_frame_halves_pairs_each_top_with_its_own_bottom_and_leaves_unrelated_crops_alone():
    images, frame_of = shuffled_halves(40, seed=1)
    noise = np.random.default_rng(2).integers(0, 256, (40, 64, 128), dtype=np.uint8)  # crops of no frame
    images = np.concatenate([images, noise])
    below = frame_halves(images)
    tops = np.flatnonzero(below >= 0)
    assert len(tops) >= 38  # of 40 frames
    assert (frame_of[tops] == frame_of[below[tops]]).all()  # every pair is one frame's
    assert (tops < 80).all() and (below[tops] < 80).all()  # no noise crop is paired
    assert len(np.union1d(tops, below[tops])) == 2 * len(tops)  # a crop is in one pair at most
    assert (frame_halves(images[:1]) == -1).all() and len(frame_halves(images[:0])) == 0


def test_frames_among_pairs_only_crops_of_the_indices_and_answers_over_all_crops():
    images, frame_of = shuffled_halves(30, seed=3)
    everywhere = frame_halves(images)
    assert (everywhere >= 0).sum() >= 28
    indices = np.arange(0, 60, 2)[::-1]  # every other crop, in any order
    below = frames_among(images, indices)
    assert below.shape == (60,)
    tops = np.flatnonzero(below >= 0)
    assert np.isin(tops, indices).all() and np.isin(below[tops], indices).all()  # no pair leaves the indices
    assert (frame_of[tops] == frame_of[below[tops]]).all()
    both_in = [t for t in np.flatnonzero(everywhere >= 0) if t in indices and everywhere[t] in indices]
    assert sorted(tops.tolist()) == sorted(both_in) and len(both_in) > 0  # the same pairs as over all crops
    assert (frames_among(images, np.arange(60)) == everywhere).all()


def test_frame_halves_on_mars64_pairs_crops_whose_masks_continue_across_the_seam(real_npz):
    from marsseg.data.clean import find_contaminated, remove_contaminated
    from marsseg.data.io import load_npz

    data = load_npz(real_npz)
    data = remove_contaminated(data, find_contaminated(data))
    below = frame_halves(data.images)
    tops = np.flatnonzero(below >= 0)
    agreement = (data.masks[tops, -1] == data.masks[below[tops], 0]).mean()
    assert len(tops) >= 850 and agreement > 0.95  # measured: 869 pairs, 0.965 (random pairs: 0.48)


def test_a_frame_that_only_frame_halves_pairs_is_still_kept_on_one_side():
    images, frame_of = shuffled_halves(10, seed=0)
    first, second = np.flatnonzero(frame_of == 0)

    def seam(top, bottom):
        return np.abs(images[top, -1].astype(int) - images[bottom, 0]).sum()

    top, bottom = (first, second) if seam(first, second) < seam(second, first) else (second, first)
    last_row, first_row = images[top, -1].astype(int), images[bottom, 0].astype(int)
    decoy = images[np.flatnonzero(frame_of == 1)[0]].copy()  # another frame's crop, whose first row becomes ...
    decoy[0] = np.clip(first_row + np.where(first_row >= last_row, 1, -1), 0, 255)  # ... a close rival seam
    images = np.concatenate([images, decoy[None]])
    data = MarsData(images, np.ones_like(images), None, None)
    assert frame_halves(images)[top] == bottom  # still the closest seam, mutually
    assert group_ids(data)[top] == group_ids(data)[bottom]
    assert group_ids(data, seams_only=True)[top] != group_ids(data, seams_only=True)[bottom]  # its ratio test fails


def test_no_frame_of_mars64_straddles_the_default_split_or_a_fold(real_npz):
    from marsseg.data.clean import find_contaminated, remove_contaminated
    from marsseg.data.io import load_npz

    data = load_npz(real_npz)
    data = remove_contaminated(data, find_contaminated(data))
    below = frame_halves(data.images)
    tops = np.flatnonzero(below >= 0)
    seam_groups = group_ids(data, seams_only=True)
    assert (seam_groups[tops] != seam_groups[below[tops]]).sum() >= 150  # measured 210: seam_pairs alone split them
    split = split_data(data, val_fraction=0.1, test_fraction=0.1, seed=0)
    part = np.zeros(len(data), dtype=np.int64)
    part[split.val], part[split.test] = 1, 2
    assert (part[tops] == part[below[tops]]).all()
    fold_of = np.zeros(len(data), dtype=np.int64)
    for k, fold in enumerate(kfold_splits(data, 3, val_fraction=0.1, seed=0)):
        fold_of[fold.test] = k
    assert (fold_of[tops] == fold_of[below[tops]]).all()


def test_kfold_test_parts_cover_every_sample_once_and_keep_frames_whole():
    frames = np.arange(300) // 2
    data = synthetic_set(frame_ids=frames)
    folds = kfold_splits(data, 3, val_fraction=0.1, seed=0)
    held_out = np.concatenate([fold.test for fold in folds])
    assert sorted(held_out.tolist()) == list(range(300))  # each sample held out exactly once
    rare = (data.masks == 4).any(axis=(1, 2))
    for fold in folds:
        parts = [set(getattr(fold, p).tolist()) for p in ("train", "val", "test")]
        assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
        assert set.union(*parts) == set(range(300))
        assert 90 <= len(fold.test) <= 110 and 20 <= len(fold.val) <= 40
        assert 8 <= rare[fold.test].sum() <= 12 and rare[fold.val].sum() >= 2  # big rock in every part
        part = np.empty(300, dtype=object)
        for name in ("train", "val", "test"):
            part[getattr(fold, name)] = name
        assert all(part[2 * k] == part[2 * k + 1] for k in range(150))  # frames never straddle
    assert not np.array_equal(folds[0].val, folds[1].val)


def test_kfold_uses_the_same_dealing_as_the_single_split():
    data = synthetic_set()
    # the single split's local test part is the first tenth of the line, as a 10-fold split's first fold
    assert np.array_equal(
        split_data(data, val_fraction=0.1, test_fraction=0.1, seed=4).test,
        kfold_splits(data, 10, val_fraction=0.1, seed=4)[0].test,
    )
    with pytest.raises(ValueError):
        kfold_splits(data, 1)
