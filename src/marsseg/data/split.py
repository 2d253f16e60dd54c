"""Group-aware, stratified train / validation / local-test split.

Made once, on the cleaned data, before any oversampling or augmentation, so that no image (nor its duplicate,
near-duplicate or other half of the same camera frame) sits on both sides of a boundary. The study's validation
score ran about 40 points above its hidden-test score; a validation set that shares frames with training is
the usual cause.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

import numpy as np

from marsseg.data.clean import hash_each
from marsseg.data.io import MarsData, write_text_atomically

RARE_CLASS = 4  # big rock


@dataclass
class Split:
    """Indices into the cleaned training samples, one array per part."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def save(self, path: str | os.PathLike) -> None:
        parts = {name: getattr(self, name).tolist() for name in ("train", "val", "test")}
        write_text_atomically(path, json.dumps(parts))

    def digest(self) -> str:
        """A short hash of the three parts' indices: runs or trials compared with each other must share it."""
        digest = hashlib.blake2b(digest_size=8)
        for name in ("train", "val", "test"):
            digest.update(name.encode() + getattr(self, name).astype(np.int64).tobytes())
        return digest.hexdigest()

    @classmethod
    def load(cls, path: str | os.PathLike) -> Split:
        with open(path) as handle:
            parts = json.load(handle)
        return cls(*(np.array(parts[name], dtype=np.int64) for name in ("train", "val", "test")))


def near_duplicate_pairs(images: np.ndarray, *, max_rms: float = 1.0, chunk: int = 2048) -> list[tuple[int, int]]:
    """Pairs of images whose 8x8 block means differ by less than `max_rms` gray levels (root mean square).

    Block means average away re-encoding and sensor noise (noise of std s leaves about s / 8), so a noisy or
    re-compressed copy of a crop stays within the bound while different crops do not. A distance, not a
    quantised hash: a hash splits copies whose block means straddle a bin edge.
    """
    n, height, width = images.shape
    blocks = images.reshape(n, height // 8, 8, width // 8, 8).mean(axis=(2, 4)).reshape(n, -1)  # (N, 128)
    blocks = blocks.astype(np.float64)
    squares = (blocks**2).sum(axis=1)
    limit = max_rms**2 * blocks.shape[1]
    pairs = []
    for start in range(0, n, chunk):  # (chunk, N) distances at a time: memory stays bounded for large files
        distance = (
            squares[start : start + chunk, None] + squares[None, :] - 2 * blocks[start : start + chunk] @ blocks.T
        )
        rows, columns = np.nonzero(distance < limit)
        pairs += [(start + i, j) for i, j in zip(rows.tolist(), columns.tolist(), strict=True) if start + i < j]
    return pairs


def seam_pairs(images: np.ndarray, *, max_ratio: float = 0.9) -> list[tuple[int, int]]:
    """Pairs (top, bottom) that look like the two halves of one camera frame.

    The course crops are the top and bottom halves of frames, shuffled, without frame ids. The last row of a
    top half continues into the first row of its bottom half, so a pair is kept when each is the other's
    closest seam match and the match is clearly closer than the runner-up (ratio test). A wrong pair only
    makes the split a little coarser; a missed pair can leak a frame across a boundary.
    """
    if len(images) < 3:
        return []
    bottom_rows = images[:, -1, :].astype(np.float32)  # (N, W)
    top_rows = images[:, 0, :].astype(np.float32)  # (N, W)
    distance = (
        (bottom_rows**2).sum(1)[:, None] + (top_rows**2).sum(1)[None, :] - 2 * bottom_rows @ top_rows.T
    )  # (N, N): squared seam distance of i above j
    np.fill_diagonal(distance, np.inf)
    best_below = distance.argmin(axis=1)
    best_above = distance.argmin(axis=0)
    two_closest = np.partition(distance, 1, axis=1)[:, :2]
    ratio = np.sqrt(np.maximum(two_closest[:, 0], 0) / np.maximum(two_closest[:, 1], 1e-9))
    return [(i, int(j)) for i, j in enumerate(best_below) if best_above[j] == i and ratio[i] < max_ratio]


# A seam is kept when it steps no more than this times the step between the halves' own last two rows: the most
# any of mars64's mutual best matches steps is 2.0 (99 % within 1.37); crops cut from different frames step
# more, and synthetic crops, which come from no frame, have their mutual best matches at a median of 2.4.
SEAM_STEP_RATIO = 1.5


def frame_halves(images: np.ndarray) -> np.ndarray:
    """(N,) for each crop the index of the crop that continues it below (the bottom half of its frame), or -1.

    For prediction (predict.predict_probabilities with `whole_frames`): the two halves of a frame, predicted as one
    image, see each other across the seam. A pair is each other's closest seam match by the L1 distance from the top
    half's last row to the bottom half's first row, with exact ties dropped on either side (a duplicated crop pairs
    with nothing) and a seam no rougher than the halves' own rows (SEAM_STEP_RATIO); where matches chain (i above j
    above k) the closer seam wins, so a crop is in at most one pair. On mars64's cleaned training crops this finds 868
    pairs whose masks agree along the seam at 96.5 % of pixels (random pairs: 48 %), 180 more than seam_pairs'
    squared distance and ratio test; the split groups by both (group_ids).
    """
    n, _, width = images.shape
    below = np.full(n, -1, dtype=np.int64)
    if n < 2:
        return below
    last_rows = images[:, -1, :].astype(np.int16)  # (N, W)
    first_rows = images[:, 0, :].astype(np.int16)
    best_below, below_distance, tied = np.zeros(n, np.int64), np.zeros(n), np.zeros(n, dtype=bool)
    best_above, above_two = np.zeros(n, np.int64), np.full((2, n), np.inf)  # each bottom's two closest tops
    chunk = max(1, 4_000_000 // (n * width))  # (chunk, N, W) differences at a time: memory stays bounded
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        distance = np.abs(last_rows[start:stop, None] - first_rows[None]).sum(axis=2, dtype=np.int64).astype(float)
        distance[np.arange(stop - start), np.arange(start, stop)] = np.inf  # (chunk, N): i above j
        two_closest = np.partition(distance, 1, axis=1)[:, :2]
        best_below[start:stop] = distance.argmin(axis=1)
        below_distance[start:stop] = two_closest[:, 0]
        tied[start:stop] = two_closest[:, 0] == two_closest[:, 1]
        column_best = distance.argmin(axis=0)
        closer = distance[column_best, np.arange(n)] < above_two[0]
        best_above[closer] = column_best[closer] + start
        above_two = np.partition(np.vstack([above_two, distance]), 1, axis=0)[:2]
    top_step = np.abs(last_rows - images[:, -2, :].astype(np.int16)).sum(axis=1)  # (N,) the rows' own step
    bottom_step = np.abs(first_rows - images[:, 1, :].astype(np.int16)).sum(axis=1)
    smooth = below_distance <= SEAM_STEP_RATIO * (top_step + bottom_step[best_below]) / 2
    tied |= (above_two[0] == above_two[1])[best_below]  # the bottom has two equally close tops
    mutual = [i for i in range(n) if best_above[best_below[i]] == i and not tied[i] and smooth[i]]
    paired = np.zeros(n, dtype=bool)
    for top in sorted(mutual, key=lambda i: below_distance[i]):
        bottom = best_below[top]
        if not paired[top] and not paired[bottom]:
            below[top] = bottom
            paired[[top, bottom]] = True
    return below


def frames_among(images: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """(N,) for each crop of `indices` that is the top half of a frame whose bottom half is also among `indices`, that
    bottom half's index; -1 for every other crop. The pairs are frame_halves' over all of `images` (images only, never
    masks): matched among `indices` alone, a crop whose own partner is outside them could pair with another."""
    below = frame_halves(images)
    inside = np.zeros(len(images), dtype=bool)
    inside[indices] = True
    below[~inside | ~inside[np.maximum(below, 0)] | (below < 0)] = -1
    return below


def frame_units(below: np.ndarray) -> list[list[int]]:
    """[top, bottom] for each pair of `below` (frame_halves' result) and [i] for every other crop, in the order of
    their first crop."""
    bottoms = set(below[below >= 0].tolist())
    return [[i, int(below[i])] if below[i] >= 0 else [i] for i in range(len(below)) if i not in bottoms]


def _union_find_roots(count: int, pairs: list[tuple[int, int]], *, keyings: list[list] = ()) -> np.ndarray:
    """(count,) one root index per sample: samples joined by a pair, or by an equal key in any keying, share it."""
    parent = list(range(count))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for keys in keyings:
        first_seen: dict = {}
        for index, key in enumerate(keys):
            if key in first_seen:
                parent[find(index)] = find(first_seen[key])
            else:
                first_seen[key] = index
    for first, second in pairs:
        parent[find(second)] = find(first)
    return np.array([find(i) for i in range(count)], dtype=np.int64)


def inferred_frame_pairs(images: np.ndarray, *, seams_only: bool = False) -> list[tuple[int, int]]:
    """Pairs of crops that look like the two halves of one camera frame: the pairs of both seam matchers,
    `seam_pairs` and `frame_halves` (or seam_pairs alone with `seams_only`)."""
    pairs = seam_pairs(images)
    if not seams_only:
        below = frame_halves(images)
        pairs += [(top, int(below[top])) for top in np.flatnonzero(below >= 0).tolist()]
    return pairs


def inferred_frame_ids(images: np.ndarray) -> np.ndarray:
    """(N,) a frame id per crop for data without one (`data merge` writes them): crops that inferred_frame_pairs
    joins share an id; ids are 0.. in the order of each frame's first crop."""
    roots = _union_find_roots(len(images), inferred_frame_pairs(images))
    return np.unique(roots, return_inverse=True)[1].astype(np.int64)


def group_ids(data: MarsData, *, infer_frames: bool = True, seams_only: bool = False) -> np.ndarray:
    """(N,) group id: samples that share an exact image, a near-duplicate key or a frame share a group.

    Frames come from the file's `frame_id` where it has one, else (with `infer_frames`) from inferred_frame_pairs,
    whose frame_halves finds 868 pairs in mars64's cleaned training crops to seam_pairs' 688 (seam_pairs alone left
    83 of them with a half on each side of the default split). `seams_only` groups by seam_pairs alone, as every
    split and fold did before 2026-11-29: only for reproducing the cross-validated tables measured on those folds
    (benchmarks/recipes.py --seams-only).
    """
    keyings = [hash_each(data.images)]
    if data.frame_ids is not None:
        keyings.append(data.frame_ids.tolist())
    linked = near_duplicate_pairs(data.images)
    if data.frame_ids is None and infer_frames:
        linked += inferred_frame_pairs(data.images, seams_only=seams_only)
    return _union_find_roots(len(data), linked, keyings=keyings)


def group_positions(
    data: MarsData, *, seed: int = 0, infer_frames: bool = True, seams_only: bool = False
) -> np.ndarray:
    """(N,) each sample's place in 0..1 when whole groups are dealt out, stratified on whether a group has big rock.

    Within each stratum (groups with big rock, groups without) the groups are shuffled and laid end to end by
    size; a sample's position is its group's centre in that line. Cutting 0..1 into intervals then gives each
    part its share of the big-rock images, as closely as whole groups allow, and never splits a group.
    """
    rng = np.random.default_rng(seed)
    groups = group_ids(data, infer_frames=infer_frames, seams_only=seams_only)
    has_rare = (data.masks == RARE_CLASS).any(axis=(1, 2))
    members: dict[int, list[int]] = {}
    for index, group in enumerate(groups.tolist()):
        members.setdefault(group, []).append(index)
    rare_groups = [g for g, idx in members.items() if has_rare[idx].any()]
    common_groups = [g for g, idx in members.items() if not has_rare[idx].any()]
    positions = np.zeros(len(data))
    for stratum in (rare_groups, common_groups):
        order = rng.permutation(len(stratum))
        total = sum(len(members[stratum[i]]) for i in order)
        dealt = 0
        for i in order:
            indices = members[stratum[i]]
            positions[indices] = (dealt + 0.5 * len(indices)) / max(total, 1)
            dealt += len(indices)
    return positions


def _split_at(is_test: np.ndarray, is_val: np.ndarray) -> Split:
    parts = (~is_test & ~is_val, is_val & ~is_test, is_test)
    return Split(*(np.flatnonzero(part).astype(np.int64) for part in parts))


def split_data(
    data: MarsData, *, val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0, infer_frames: bool = True
) -> Split:
    """Split whole groups into train / val / test, stratified on whether a group contains big rock
    (group_positions): the local test part is the first `test_fraction` of the line, validation the next."""
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(
            f"val_fraction {val_fraction} and test_fraction {test_fraction} must be in [0, 1) and sum to less than 1"
        )
    positions = group_positions(data, seed=seed, infer_frames=infer_frames)
    return _split_at(positions < test_fraction, positions < test_fraction + val_fraction)


def kfold_splits(
    data: MarsData,
    folds: int,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    infer_frames: bool = True,
    seams_only: bool = False,
) -> list[Split]:
    """`folds` group-aware splits whose test parts cover every sample exactly once (cross-validation).

    Fold k holds out the k-th of `folds` equal stretches of group_positions as its test part and the next
    `val_fraction` of the line (wrapping round) as its validation part, for the big-rock scale (and early stopping
    if asked); it trains on the rest. No group is ever on two sides of a fold. `seams_only`: group_ids'.
    """
    if folds < 2 or not 0 < val_fraction < 1 - 1 / folds:
        raise ValueError(f"need folds >= 2 and 0 < val_fraction < 1 - 1/folds, got {folds} and {val_fraction}")
    positions = group_positions(data, seed=seed, infer_frames=infer_frames, seams_only=seams_only)
    splits = []
    for fold in range(folds):
        start, end = fold / folds, (fold + 1) / folds
        is_test = (positions >= start) & (positions < end)
        is_val = (positions - end) % 1.0 < val_fraction
        splits.append(_split_at(is_test, is_val))
    return splits
