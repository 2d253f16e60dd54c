"""From a data file (or the embedded synthetic data) to cleaned samples and a split: what every command
that trains or scores starts with."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from marsseg.config import DataConfig
from marsseg.data.clean import CleaningReport, find_contaminated, remove_contaminated
from marsseg.data.io import MarsData, load_npz, validate_arrays
from marsseg.data.split import Split, split_data

SYNTHETIC = ""  # the data path that means "the embedded synthetic data set"


@dataclass
class PreparedData:
    data: MarsData  # cleaned
    cleaning: CleaningReport
    split: Split
    fingerprint: str  # of the raw training_set, so a run can refuse a different file later


def load_data(path: str, require_test: bool = False) -> MarsData:
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


def prepare_data(cfg: DataConfig, split: Split | None = None) -> PreparedData:
    """Load `cfg.path`, remove contaminated samples, and split (or reuse `split`, e.g. a saved run's)."""
    raw = load_data(cfg.path)
    report = find_contaminated(raw)
    data = remove_contaminated(raw, report)
    if split is None:
        split = split_data(data, cfg.val_fraction, cfg.test_fraction, cfg.split_seed)
    return PreparedData(data, report, split, fingerprint(raw))
