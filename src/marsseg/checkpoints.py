"""Checkpoints and run directories: best.pt and last.pt (written atomically; last.pt carries everything a resumed
run needs), rebuilding a run's model from its checkpoint, metrics.csv, and the checks that a run directory may be
started, replaced or resumed with the command given."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import torch
from torch import nn

from marsseg.config import Config, from_dict, get_field, load_config
from marsseg.data.io import write_atomically
from marsseg.errors import UserError
from marsseg.precision import resolve_precision
from marsseg.training import build_model, resolve_device


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Write atomically: a kill during the write leaves the previous checkpoint intact."""
    write_atomically(path, lambda temporary: torch.save(state, temporary))


def load_checkpoint(path: str | os.PathLike) -> dict:
    if not os.path.isfile(path):
        raise UserError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # a truncated or foreign file
        raise UserError(f"{path}: not a readable marsseg checkpoint ({type(error).__name__})") from None


def load_model(run_dir: str | os.PathLike, which: str = "best") -> tuple[nn.Module, Config]:
    """Rebuild the model of a run from its checkpoint alone (the checkpoint carries the config)."""
    path = Path(run_dir) / f"{which}.pt"
    state = load_checkpoint(path)
    try:
        cfg = from_dict(state["config"], str(path))
        model = build_model(cfg)
        model.load_state_dict(state["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise UserError(f"{path}: not a marsseg checkpoint ({type(error).__name__})") from None
    return model.eval(), cfg


HISTORY_FIELDS = [
    "epoch",
    "lr",
    "train_loss",
    "val_miou",
    "iou_soil",
    "iou_bedrock",
    "iou_sand",
    "iou_big_rock",
    "seconds",
    "data_share",
]


def write_history(path: Path, history: list[dict]) -> None:
    """metrics.csv: one row of HISTORY_FIELDS per epoch, written atomically."""

    def write(temporary: str) -> None:
        with open(temporary, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=HISTORY_FIELDS)
            writer.writeheader()
            writer.writerows(history)

    write_atomically(path, write)


RUN_FILES = (
    "confusion_val.png",
    "confusion_test.png",
    "confusion_train.png",
    "worst_val.png",
    "worst_test.png",
    "worst_train.png",
    "config.yaml",
    "split.json",
    "data.json",
    "metrics.csv",
    "metrics.json",
    "curves.png",
    "confusion.png",
    "best.pt",
    "last.pt",
)


def prepare_run_dir(run_dir: str | os.PathLike, resume: bool, force: bool) -> Path:
    """Refuse an existing run directory unless resuming or forced; forced, its run files are removed first
    (so no checkpoint or figure of the old run survives beside the new one)."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"{run_dir}: exists and is not a directory; name a run directory")
    if run_dir.exists() and any(run_dir.iterdir()) and not (resume or force):
        raise UserError(f"{run_dir}: run directory exists; pass --resume to continue it or --force to replace it")
    if resume and not (run_dir / "last.pt").is_file():
        raise UserError(f"{run_dir}: nothing to resume (no last.pt)")
    if force and not resume:
        for name in RUN_FILES:
            (run_dir / name).unlink(missing_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def run_device_name(cfg: Config, run_dir: str | os.PathLike, resume: bool) -> str:
    """The device a run trains on: a resumed run keeps the one in its own config.yaml, not the defaults'."""
    saved = Path(run_dir) / "config.yaml"
    if resume and saved.is_file():
        return load_config(str(saved)).device
    return cfg.device


def check_resume_matches_run(run_dir: str | os.PathLike, requested: Config, names: list[str]) -> None:
    """A run is resumed with the command that started it plus --resume: each of the fields `names` that the command
    sets must hold the run's own value. Raises UserError naming the first field that would change."""
    saved = Path(run_dir) / "config.yaml"
    if not saved.is_file():
        return  # fit() says there is nothing to resume
    run = load_config(str(saved))
    for name in names:
        theirs, mine = get_field(run, name), get_field(requested, name)
        if name == "data.path" and theirs and mine:
            same = os.path.realpath(theirs) == os.path.realpath(mine)
        elif name == "precision":  # the run saved what "auto" resolved to on its device
            device = resolve_device(run.device)
            same = resolve_precision(theirs, device) == resolve_precision(mine, device)
        else:
            same = theirs == mine
        if not same:
            raise UserError(
                f"--resume: field '{name}': the run {run_dir} has {theirs!r}, the command line asks for {mine!r}; "
                "resume with the run's value, or start a new run (another --out, or --force without --resume)"
            )
