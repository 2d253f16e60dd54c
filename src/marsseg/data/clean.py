"""Find contaminated training samples by hashing.

The course data carry bogus samples: a sprite pasted over an ordinary crop, every one of them with the same
mask. Hashing the images finds nothing (the crops under the sprite differ); hashing the masks finds the
bogus group, but also legitimate crops that share an identical near-uniform mask. So a group of identical
masks is called contaminated only when its images also share pasted pixels: a region where the pixel values
barely vary across the group while the rest of the images do. That region and its values form a template,
and every training image that carries the template is removed, whatever its mask.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from marsseg.data.io import MarsData


def hash_each(arrays: np.ndarray) -> list[str]:
    """One short hex digest per leading-axis item (identical bytes, identical digest)."""
    return [hashlib.blake2b(item.tobytes(), digest_size=8).hexdigest() for item in arrays]


def duplicate_groups(arrays: np.ndarray) -> list[list[int]]:
    """Indices of items that are byte-identical, one list per group of two or more, largest first."""
    groups: dict[str, list[int]] = defaultdict(list)
    for index, digest in enumerate(hash_each(arrays)):
        groups[digest].append(index)
    return sorted((g for g in groups.values() if len(g) > 1), key=len, reverse=True)


@dataclass
class CleaningRules:
    """Thresholds of the contamination detector; the defaults hold on the course data and the synthetic data."""

    min_group: int = 5  # identical masks shared by fewer samples are never suspected
    relative_std: float = 0.25  # a pixel is "shared" when its std across the group is below this share
    # of the group's median pixel std: pasted pixels barely vary, the crops under them do
    min_shared_fraction: float = 0.02  # share of the image that must be shared pixels (a sprite)
    match_tolerance: float = 24.0  # gray levels an image may differ from the template and still match
    min_match_fraction: float = 0.9  # share of template pixels that must match


@dataclass
class Template:
    """Pasted pixels found in a group of identical masks."""

    region: np.ndarray  # (64, 128) bool
    values: np.ndarray  # (64, 128) float32, meaningful inside region
    mask_group: list[int] = field(default_factory=list)


@dataclass
class CleaningReport:
    """Which training samples were removed and why."""

    removed: dict[int, str]  # index -> reason
    templates: list[Template]
    n_samples: int

    def kept_indices(self) -> np.ndarray:
        return np.array([i for i in range(self.n_samples) if i not in self.removed], dtype=np.int64)

    def removed_indices(self) -> np.ndarray:
        return np.array(sorted(self.removed), dtype=np.int64)

    def counts_by_rule(self) -> dict[str, int]:
        counts: dict[str, int] = defaultdict(int)
        for reason in self.removed.values():
            counts[reason.split(":")[0]] += 1
        return dict(counts)


def find_template(images: np.ndarray, rules: CleaningRules) -> Template | None:
    """The pasted pixels shared by a group of images, or None when they share none."""
    stack = images.astype(np.float32)  # (K, H, W)
    pixel_std = stack.std(axis=0)
    shared = pixel_std < rules.relative_std * np.median(pixel_std)
    if shared.mean() < rules.min_shared_fraction:
        return None
    return Template(region=shared, values=np.median(stack, axis=0))


def matches_template(images: np.ndarray, template: Template, rules: CleaningRules) -> np.ndarray:
    """(N,) bool: which images carry the template's pixels."""
    inside = images[:, template.region].astype(np.float32)  # (N, P)
    close = np.abs(inside - template.values[template.region]) <= rules.match_tolerance
    return close.mean(axis=1) >= rules.min_match_fraction


def find_contaminated(data: MarsData, *, rules: CleaningRules | None = None) -> CleaningReport:
    """Detect contaminated training samples; nothing is removed from `data` itself."""
    rules = rules or CleaningRules()
    removed: dict[int, str] = {}
    templates = []
    for group in duplicate_groups(data.masks):
        if len(group) < rules.min_group:
            break  # groups are sorted by size
        template = find_template(data.images[group], rules)
        if template is None:
            continue
        template.mask_group = group
        templates.append(template)
        carriers = np.flatnonzero(matches_template(data.images, template, rules))
        in_group = set(group)
        for index in carriers.tolist():
            if index in in_group:
                removed[index] = f"mask-group+sprite: shares one mask with {len(group)} samples and pasted pixels"
            else:
                removed.setdefault(index, "sprite: carries the pasted pixels of a contaminated mask group")
    return CleaningReport(removed=removed, templates=templates, n_samples=len(data))


def remove_contaminated(data: MarsData, report: CleaningReport) -> MarsData:
    """`data` without the samples the report removed."""
    return data.subset(report.kept_indices())
