"""From a data file (or the embedded synthetic data) to cleaned samples and a split: what every command
that trains or scores starts with."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from marsseg.config import DataConfig
from marsseg.data.clean import CleaningReport, find_contaminated, remove_contaminated
from marsseg.data.io import DataError, MarsData, load_npz, validate_arrays, write_text_atomically
from marsseg.data.split import Split, split_data

SYNTHETIC = ""  # the data path that means "the embedded synthetic data set"


@dataclass
class PreparedData:
    data: MarsData  # cleaned
    cleaning: CleaningReport
    split: Split
    fingerprint: str  # of the raw training_set, so a run can refuse a different file later


def load_data(path: str, *, require_test: bool = False) -> MarsData:
    """The file at `path`, or the embedded synthetic data set when `path` is empty."""
    if path == SYNTHETIC:
        from marsseg.data.synth import make_synthetic

        return validate_arrays("<synthetic>", make_synthetic())
    return load_npz(path, require_test=require_test)


def fingerprint(data: MarsData) -> str:
    digest = hashlib.blake2b(digest_size=8)
    digest.update(data.images.tobytes())
    digest.update(data.masks.tobytes())
    return digest.hexdigest()


def prepare_data(
    cfg: DataConfig, *, split: Split | None = None, expected_fingerprint: str | None = None
) -> PreparedData:
    """Load `cfg.path`, remove contaminated samples, and split (or reuse `split`, e.g. a saved run's).

    With `expected_fingerprint` (a run's, from `recorded_fingerprint`), other data is refused: a resumed or scored
    run must not mix two data sets.
    """
    raw = load_data(cfg.path)
    if expected_fingerprint is not None and fingerprint(raw) != expected_fingerprint:
        raise DataError(f"{raw.path}: training_set differs from the one the run was trained on")
    if raw.frame_size is not None and raw.frame_size != cfg.frame_size:
        # predict --images resizes new frames by the config's frame_size: it must be the data's.
        raise DataError(
            f"{raw.path}: field 'frame_size': found {raw.frame_size}, expected data.frame_size {cfg.frame_size}; "
            f"pass --set data.frame_size={raw.frame_size}"
        )
    report = find_contaminated(raw)
    data = remove_contaminated(raw, report)
    if split is None:
        split = split_data(data, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction, seed=cfg.split_seed)
        if len(split.val) == 0 or not data.masks[split.val].any():
            raise DataError(
                f"{raw.path}: field 'training_set': found {len(data)} usable samples, too few for a "
                f"validation part with labeled pixels (val_fraction {cfg.val_fraction})"
            )
    elif max(split.train.max(initial=-1), split.val.max(initial=-1), split.test.max(initial=-1)) >= len(data):
        raise DataError(f"{raw.path}: field 'training_set': the saved split does not fit its {len(data)} samples")
    return PreparedData(data, report, split, fingerprint(raw))


def write_data_record(run_dir: str | os.PathLike, prepared: PreparedData) -> None:
    """data.json: which file a run trained on (its fingerprint) and which samples cleaning removed, and why."""
    record = {
        "path": prepared.data.path,
        "fingerprint": prepared.fingerprint,
        "removed": {str(k): v for k, v in sorted(prepared.cleaning.removed.items())},
    }
    write_text_atomically(Path(run_dir) / "data.json", json.dumps(record, indent=1))


def recorded_fingerprint(run_dir: str | os.PathLike) -> str:
    """The fingerprint of the data a run was trained on (from its data.json)."""
    path = Path(run_dir) / "data.json"
    try:
        return json.loads(path.read_text())["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError):
        raise DataError(f"{path}: missing or unreadable; is {run_dir} a marsseg run directory?") from None
