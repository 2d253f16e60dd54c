"""Group-aware, stratified train / validation / local-test split.

Made once, on the cleaned data, before any oversampling or augmentation, so that no image (nor its duplicate,
near-duplicate or other half of the same camera frame) sits on both sides of a boundary. The study's validation
score ran about 40 points above its hidden-test score; a validation set that shares frames with training is
the usual cause.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from marsseg.data.clean import hash_each
from marsseg.data.io import MarsData, write_atomically

RARE_CLASS = 4  # big rock


@dataclass
class Split:
    """Indices into the cleaned training samples, one array per part."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def save(self, path: str | os.PathLike) -> None:
        parts = {name: getattr(self, name).tolist() for name in ("train", "val", "test")}
        write_atomically(path, lambda temporary: open(temporary, "w").write(json.dumps(parts)))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Split:
        with open(path) as handle:
            parts = json.load(handle)
        return cls(*(np.array(parts[name], dtype=np.int64) for name in ("train", "val", "test")))


def near_duplicate_keys(images: np.ndarray) -> list[str]:
    """A coarse hash per image: 8x8 block means quantised to 16 levels, so re-encoded or slightly noisy
    copies of one crop share a key."""
    n, height, width = images.shape
    blocks = images.reshape(n, height // 8, 8, width // 8, 8).mean(axis=(2, 4))  # (N, 8, 16)
    return hash_each((blocks // 16).astype(np.uint8))


def group_ids(data: MarsData) -> np.ndarray:
    """(N,) group id: samples that share an exact image, a near-duplicate key or a frame id share a group."""
    parent = list(range(len(data)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    keyings = [hash_each(data.images), near_duplicate_keys(data.images)]
    if data.frame_ids is not None:
        keyings.append(data.frame_ids.tolist())
    for keys in keyings:
        first_seen: dict = {}
        for index, key in enumerate(keys):
            if key in first_seen:
                parent[find(index)] = find(first_seen[key])
            else:
                first_seen[key] = index
    return np.array([find(i) for i in range(len(data))], dtype=np.int64)


def split_data(data: MarsData, val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0) -> Split:
    """Split whole groups into train / val / test, stratified on whether a group contains big rock.

    Within each stratum the groups are shuffled and dealt out by cumulative size, so each part receives
    its fraction of the big-rock images as closely as whole groups allow.
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(
            f"val_fraction {val_fraction} and test_fraction {test_fraction} must be in [0, 1) and sum to less than 1"
        )
    rng = np.random.default_rng(seed)
    groups = group_ids(data)
    has_rare = (data.masks == RARE_CLASS).any(axis=(1, 2))
    members: dict[int, list[int]] = {}
    for index, group in enumerate(groups.tolist()):
        members.setdefault(group, []).append(index)
    rare_groups = [g for g, idx in members.items() if has_rare[idx].any()]
    common_groups = [g for g, idx in members.items() if not has_rare[idx].any()]

    parts: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for stratum in (rare_groups, common_groups):
        order = rng.permutation(len(stratum))
        total = sum(len(members[stratum[i]]) for i in order)
        dealt = 0
        for i in order:
            indices = members[stratum[i]]
            position = (dealt + 0.5 * len(indices)) / max(total, 1)  # the group's centre in the stratum
            if position < test_fraction:
                parts["test"].extend(indices)
            elif position < test_fraction + val_fraction:
                parts["val"].extend(indices)
            else:
                parts["train"].extend(indices)
            dealt += len(indices)
    return Split(*(np.array(sorted(parts[name]), dtype=np.int64) for name in ("train", "val", "test")))
