"""Loading, validating and atomically writing data files in the course layout.

The course layout is an `.npz` with `training_set` (N, 2, 64, 128) uint8 — `[:, 0]` the grayscale image,
`[:, 1]` the label mask with values 0..4 — and `test_set` (M, 64, 128) uint8 images without labels.
An optional `frame_id` (N,) integer array says which training samples come from the same camera frame, and an
optional `frame_size` integer the side the frames were resized to before cutting (`marsseg data import` writes it).
A merged file (`marsseg data merge`) also has `source` (N,) integers indexing `source_name` (S,) strings: which
input file each training sample came from, so that figures can be given per source.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from marsseg.errors import UserError

HEIGHT, WIDTH = 64, 128
NUM_CLASSES = 5
CLASS_NAMES = ("background", "soil", "bedrock", "sand", "big rock")


class DataError(UserError):
    """A data file that is missing, unreadable or not in the course layout."""


@dataclass
class MarsData:
    """The validated contents of one data file."""

    images: np.ndarray  # (N, 64, 128) uint8
    masks: np.ndarray  # (N, 64, 128) uint8, values 0..4
    test_images: np.ndarray | None  # (M, 64, 128) uint8, or None when the file has no test_set
    frame_ids: np.ndarray | None  # (N,) int64, or None
    path: str = ""
    frame_size: int | None = None  # the side whole frames were resized to before cutting, when the file says
    sources: np.ndarray | None = None  # (N,) int64 index into source_names, for a merged file; else None
    source_names: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, indices: np.ndarray) -> MarsData:
        """The training samples at `indices` (test images, path and source names kept)."""
        frames = None if self.frame_ids is None else self.frame_ids[indices]
        sources = None if self.sources is None else self.sources[indices]
        return MarsData(
            self.images[indices],
            self.masks[indices],
            self.test_images,
            frames,
            self.path,
            self.frame_size,
            sources,
            self.source_names,
        )


def _describe(array: np.ndarray) -> str:
    return f"shape {tuple(array.shape)} dtype {array.dtype}"


def _check_uint8(path: str, field: str, array: np.ndarray) -> None:
    if array.dtype != np.uint8:
        extra = ""
        if np.issubdtype(array.dtype, np.floating) and np.isnan(array).any():
            extra = " containing NaN"
        raise DataError(f"{path}: field '{field}': found dtype {array.dtype}{extra}, expected uint8")


def validate_arrays(path: str, arrays: dict[str, np.ndarray], *, require_test: bool = False) -> MarsData:
    """Check arrays against the course layout and return them as `MarsData`.

    Raises:
        DataError: naming the file, the field, what was found and what was expected.
    """
    if "training_set" not in arrays:
        found = ", ".join(sorted(arrays)) or "no arrays"
        raise DataError(f"{path}: field 'training_set' missing: found {found}, expected training_set and test_set")
    train = arrays["training_set"]
    if train.ndim != 4 or train.shape[1:] != (2, HEIGHT, WIDTH):
        raise DataError(
            f"{path}: field 'training_set': found {_describe(train)}, expected shape (N, 2, {HEIGHT}, {WIDTH})"
        )
    if train.shape[0] == 0:
        raise DataError(f"{path}: field 'training_set': found 0 samples, expected at least 1")
    _check_uint8(path, "training_set", train)
    masks = train[:, 1]
    if masks.max() >= NUM_CLASSES:
        bad = np.unique(masks[masks >= NUM_CLASSES])[:5].tolist()
        raise DataError(f"{path}: field 'training_set' masks: found label values {bad}, expected 0..4")

    test = arrays.get("test_set")
    if test is None and require_test:
        raise DataError(f"{path}: field 'test_set' missing: expected test images of shape (M, {HEIGHT}, {WIDTH})")
    if test is not None:
        if test.ndim != 3 or test.shape[1:] != (HEIGHT, WIDTH):
            raise DataError(f"{path}: field 'test_set': found {_describe(test)}, expected shape (M, {HEIGHT}, {WIDTH})")
        if test.shape[0] == 0:
            raise DataError(f"{path}: field 'test_set': found 0 images, expected at least 1")
        _check_uint8(path, "test_set", test)

    frames = arrays.get("frame_id")
    if frames is not None:
        if frames.shape != (train.shape[0],) or not np.issubdtype(frames.dtype, np.integer):
            raise DataError(
                f"{path}: field 'frame_id': found {_describe(frames)}, expected integers of shape ({train.shape[0]},)"
            )
        frames = frames.astype(np.int64)
    frame_size = arrays.get("frame_size")
    if frame_size is not None:
        if frame_size.shape != () or not np.issubdtype(frame_size.dtype, np.integer) or frame_size < 1:
            raise DataError(f"{path}: field 'frame_size': found {_describe(frame_size)}, expected one integer >= 1")
        frame_size = int(frame_size)
    sources, source_names = _validate_sources(path, arrays, train.shape[0])
    return MarsData(
        np.ascontiguousarray(train[:, 0]),
        np.ascontiguousarray(masks),
        test,
        frames,
        str(path),
        frame_size,
        sources,
        source_names,
    )


def _validate_sources(path: str, arrays: dict[str, np.ndarray], samples: int) -> tuple[np.ndarray | None, tuple]:
    sources, names = arrays.get("source"), arrays.get("source_name")
    if sources is None and names is None:
        return None, ()
    if sources is None or names is None:
        raise DataError(f"{path}: fields 'source' and 'source_name': found one without the other, expected both")
    if sources.shape != (samples,) or not np.issubdtype(sources.dtype, np.integer):
        raise DataError(f"{path}: field 'source': found {_describe(sources)}, expected integers of shape ({samples},)")
    if names.ndim != 1 or names.dtype.kind != "U" or len(names) == 0:
        raise DataError(f"{path}: field 'source_name': found {_describe(names)}, expected a list of names")
    if sources.min() < 0 or sources.max() >= len(names):
        raise DataError(f"{path}: field 'source': found values outside 0..{len(names) - 1} (one per source_name)")
    return sources.astype(np.int64), tuple(str(name) for name in names)


def load_npz(path: str | os.PathLike, *, require_test: bool = False) -> MarsData:
    """Read and validate a data file in the course layout.

    Raises:
        DataError: the file is missing, not an npz, truncated, or its arrays are not in the course layout.
    """
    path = str(path)
    if not os.path.exists(path):
        raise DataError(f"{path}: file not found, expected an .npz in the course layout")
    if os.path.isdir(path):
        raise DataError(f"{path}: is a directory, expected an .npz file")
    try:
        with np.load(path, allow_pickle=False) as npz:
            if not isinstance(npz, np.lib.npyio.NpzFile):
                raise DataError(f"{path}: found a single .npy array, expected an .npz with training_set and test_set")
            arrays = {key: npz[key] for key in npz.files}
    except DataError:
        raise
    except (zipfile.BadZipFile, EOFError) as error:
        raise DataError(f"{path}: not a readable .npz (truncated or corrupt: {error})") from None
    except (ValueError, OSError) as error:
        raise DataError(f"{path}: not a readable .npz ({error})") from None
    return validate_arrays(path, arrays, require_test=require_test)


def refuse_to_overwrite(path: str | os.PathLike, force: bool) -> None:
    """Raise unless `path` is free or the user passed --force."""
    if os.path.exists(path) and not force:
        raise UserError(f"{path}: already exists; pass --force to overwrite it")


def write_atomically(path: str | os.PathLike, write) -> None:
    """Call `write(temporary_path)`, then rename the result onto `path` so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


@contextmanager
def staged_directory(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside `final` to write many files into. When the block ends normally each file
    moves into the same place under `final` (an atomic rename each); when it raises, the folder is removed, so a
    failure half-way leaves no partial output."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    try:
        yield staging
        for path in sorted(staging.rglob("*")):
            if path.is_file():
                target = final / path.relative_to(staging)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_text_atomically(path: str | os.PathLike, text: str) -> None:
    def write(temporary: str) -> None:
        with open(temporary, "w") as handle:
            handle.write(text)

    write_atomically(path, write)


def save_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    """Write arrays as an uncompressed .npz, atomically."""

    def write(temporary: str) -> None:
        with open(temporary, "wb") as handle:
            np.savez(handle, **arrays)

    write_atomically(path, write)


def to_course_layout(data: MarsData) -> dict[str, np.ndarray]:
    """The arrays of `data` as the course file stores them."""
    arrays = {"training_set": np.stack([data.images, data.masks], axis=1)}
    if data.test_images is not None:
        arrays["test_set"] = data.test_images
    if data.frame_ids is not None:
        arrays["frame_id"] = data.frame_ids
    if data.frame_size is not None:
        arrays["frame_size"] = np.array(data.frame_size)
    if data.sources is not None:
        arrays["source"] = data.sources
        arrays["source_name"] = np.array(data.source_names)
    return arrays
