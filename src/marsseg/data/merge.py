"""Merging several data files in the course layout into one, for training on every labeled frame at once.

Each input keeps its identity: `source` (N,) says which file a training sample came from (`source_name` holds the
names), so splits and reports can give figures per source. Frame ids stay distinct across inputs (each file's are
offset past the previous ones), and a file without frame ids (the course file) gets them inferred from the halves
of its camera frames (split.inferred_frame_ids), so that no frame straddles a split of the merged data. Exact and
near-duplicate images are grouped across inputs when the merged file is split, like any other file's.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from marsseg.data.io import DataError, load_npz
from marsseg.data.split import inferred_frame_ids


def merge_data_files(paths: list[str | os.PathLike], *, keep_test: bool = True) -> dict[str, np.ndarray]:
    """The arrays of one course-layout file holding the training samples of every file in `paths`, in order.

    With `keep_test`, the test sets are concatenated too (in the same order), with `test_source` saying where each
    test image came from; without it the merged file has no test_set.

    Raises:
        DataError: fewer than two files, a file named twice, an unreadable file, or frame sizes that disagree.
    """
    if len(paths) < 2:
        raise DataError(f"data merge: found {len(paths)} file, expected two or more to merge")
    resolved = [Path(path).resolve() for path in paths]
    for index, path in enumerate(resolved):
        if path in resolved[:index]:
            raise DataError(f"{paths[index]}: named twice, expected each file once")
    images, masks, frame_ids, sources, source_names = [], [], [], [], []
    test_images, test_sources = [], []
    frame_sizes = {}
    next_frame = 0
    for path in paths:
        data = load_npz(path)
        names = data.source_names or (Path(path).stem,)
        own_sources = data.sources if data.sources is not None else np.zeros(len(data), dtype=np.int64)
        frames = data.frame_ids if data.frame_ids is not None else inferred_frame_ids(data.images)
        frames = np.unique(frames, return_inverse=True)[1].astype(np.int64)  # 0.. within this file
        images.append(data.images)
        masks.append(data.masks)
        frame_ids.append(frames + next_frame)
        next_frame += int(frames.max()) + 1
        sources.append(own_sources + len(source_names))
        if keep_test and data.test_images is not None:
            test_images.append(data.test_images)
            test_sources.append(np.full(len(data.test_images), len(source_names), dtype=np.int64))
        source_names += [str(name) for name in names]
        if data.frame_size is not None:
            frame_sizes[str(path)] = data.frame_size
    if len(set(source_names)) < len(source_names):
        repeated = sorted({name for name in source_names if source_names.count(name) > 1})
        raise DataError(f"data merge: found the source name {repeated[0]!r} twice, expected files with distinct names")
    if len(set(frame_sizes.values())) > 1:
        found = ", ".join(f"{path}: {size}" for path, size in frame_sizes.items())
        raise DataError(f"data merge: field 'frame_size' differs ({found}), expected one frame size for all files")
    arrays = {
        "training_set": np.stack([np.concatenate(images), np.concatenate(masks)], axis=1),
        "frame_id": np.concatenate(frame_ids),
        "source": np.concatenate(sources),
        "source_name": np.array(source_names),
    }
    if frame_sizes:
        arrays["frame_size"] = np.array(next(iter(frame_sizes.values())))
    if test_images:
        arrays["test_set"] = np.concatenate(test_images)
        arrays["test_source"] = np.concatenate(test_sources)
    return arrays
