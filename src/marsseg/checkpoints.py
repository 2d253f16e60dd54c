"""Checkpoints and run directories: best.pt and last.pt (written atomically; last.pt carries everything a resumed
run needs), rebuilding a run's model from its checkpoint, metrics.csv, and the checks that a run directory may be
started, replaced or resumed with the command given."""

from __future__ import annotations

import csv
import dataclasses
import os
import pickle
import random
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn

from marsseg.config import Config, from_dict, get_field, to_dict
from marsseg.data.io import write_atomically
from marsseg.data.split import Split
from marsseg.errors import UserError
from marsseg.models import Ensemble, build_model, build_network
from marsseg.precision import resolve_device, resolve_precision


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Write atomically: a kill during the write leaves the previous checkpoint intact. `state` must hold only
    tensors and plain values (dicts, lists, tuples, str, int, float, bool, None), so that load_checkpoint can read
    it back without running code; the check here keeps a writer from making a file its own reader refuses."""

    def write(temporary: str) -> None:
        torch.save(state, temporary)
        try:
            torch.load(temporary, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            raise RuntimeError(f"{path}: a checkpoint must hold only tensors and plain values ({error})") from None

    write_atomically(path, write)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """A checkpoint's contents, read with weights_only: tensors and plain values only, so a crafted file cannot run
    code here. A file that holds anything else (a pickle of another kind, or a run of a marsseg older than this
    rule, whose last.pt kept numpy's RNG state as an array) is refused, naming the file.

    Raises:
        UserError: the file is missing, unreadable, or holds more than tensors and plain values.
    """
    if not os.path.isfile(path):
        raise UserError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        if not zipfile.is_zipfile(path):  # not a torch.save file at all: torch reports any such file this way
            raise UserError(f"{path}: not a readable marsseg checkpoint (not a file torch.save wrote)") from None
        raise UserError(
            f"{path}: refused: it holds objects other than tensors and plain values, which could run code when "
            "loaded; if it is a run of an earlier marsseg that you trust, `marsseg convert-run RUN` rewrites it"
        ) from None
    except Exception as error:  # a truncated or foreign file
        raise UserError(f"{path}: not a readable marsseg checkpoint ({type(error).__name__})") from None


def convert_trusted_run(run_dir: str | os.PathLike) -> list[Path]:
    """Rewrite the checkpoints of a run written by an earlier marsseg so that they hold only tensors and plain values:
    each is loaded as a full pickle (which runs whatever code it holds: only for files the user trusts), its
    numpy RNG state turned into a tensor, and written back. Returns the files rewritten.

    Raises:
        UserError: no checkpoint in `run_dir`, or one that is not a marsseg checkpoint even as a pickle.
    """
    run_dir = Path(run_dir)
    paths = sorted(p for p in [*run_dir.glob("*.pt"), *run_dir.glob("member_*/*.pt")] if p.is_file())
    if not paths:
        raise UserError(f"{run_dir}: no checkpoints (*.pt) to convert; is it a marsseg run directory?")
    for path in paths:
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as error:
            raise UserError(f"{path}: not a readable checkpoint ({type(error).__name__})") from None
        if not isinstance(state, dict) or "config" not in state:
            raise UserError(f"{path}: not a marsseg checkpoint (no config); left as it was")
        if isinstance(state.get("rng", {}).get("numpy"), tuple):  # np.random.get_state()'s legacy tuple
            _, key, pos, has_gauss, gauss = state["rng"]["numpy"]
            state["rng"]["numpy"] = _plain_numpy_state(
                {"bit_generator": "MT19937", "state": {"key": key, "pos": pos}, "has_gauss": has_gauss, "gauss": gauss}
            )
        save_checkpoint(path, state)
    return paths


# The model marsseg ships (docs/model-card.md; `make model` rebuilds it): used wherever no run is named.
SHIPPED_MODEL = Path(__file__).resolve().parent / "shipped" / "navcam.pt"


def shipped_model() -> Path:
    """SHIPPED_MODEL's path, or a UserError that says how to rebuild it when it is missing."""
    if not SHIPPED_MODEL.is_file():
        raise UserError(f"{SHIPPED_MODEL}: the shipped model is missing; name a run, or rebuild it with `make model`")
    return SHIPPED_MODEL


def load_model(run_dir: str | os.PathLike, *, which: str = "best") -> tuple[nn.Module, Config]:
    """Rebuild the scored model of a run from its checkpoint alone (the checkpoint carries the config): `which`
    "best" is the run's model (best.pt: the epoch optim.keep keeps), "last" the last epoch's (its EMA when the run
    keeps one, as that is what is scored); "epoch_N" a snapshot of the scored model after epoch N, written as best.pt
    is (benchmarks/cross_validation.py keeps them). Only best.pt's config holds the big-rock scale chosen on
    validation; the others have the configured one. `run_dir` may also name a model file itself (a best.pt, a file
    `marsseg pack` wrote, the shipped model): that file's model is returned, in fp32 whatever its weights are."""
    if which not in ("best", "last") and not re.fullmatch(r"epoch_\d+", which):
        raise ValueError(f"which: found {which!r}, expected 'best', 'last' or 'epoch_N'")
    path = Path(run_dir) / f"{which}.pt"
    if Path(run_dir).is_file():
        if which != "best":
            raise ValueError(f"which: found {which!r} for the model file {run_dir}, which holds one model")
        path = Path(run_dir)
    elif which == "best" and not path.is_file() and (Path(run_dir) / BEST_EPOCH_FILE).is_file():
        raise UserError(f"{run_dir}: the run has not finished (no best.pt yet); --resume it to make its model")
    elif not Path(run_dir).exists():
        raise UserError(f"{run_dir}: not found, expected a run directory written by marsseg train or a model file")
    state = load_checkpoint(path)
    try:
        cfg = from_dict(state["config"], source=str(path))
        # last.pt and snapshots hold one network a member: a side-by-side ensemble of an older marsseg held several
        networks = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, keep="last"))
        weights = scored_weights(state)
        model = build_model(cfg, weights=weights) if which == "best" else build_model(networks)
        model.load_state_dict(weights)  # copies into the model's fp32 parameters, from fp16 weights too
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise UserError(f"{path}: not a marsseg checkpoint ({type(error).__name__})") from None
    return model.eval(), cfg


def pack_model(run_dir: str | os.PathLike, out: str | os.PathLike, *, half: bool = False) -> None:
    """One file that holds a run's model (best.pt's config and weights, nothing to resume from), to share or ship;
    with `half`, its floating-point weights in fp16 (half the size; they are computed in fp32 when loaded)."""
    source = Path(run_dir) if Path(run_dir).is_file() else Path(run_dir) / "best.pt"
    state = load_checkpoint(source)
    weights = {k: v.half() if half and v.is_floating_point() else v for k, v in state["model"].items()}
    packed = {"config": state["config"], "model": weights, "epochs": state.get("epochs")}
    save_checkpoint(out, packed)


def scored_weights(checkpoint: dict) -> dict:
    """The weights of the model a checkpoint's run scores: last.pt's "model" holds the trained weights and its "ema"
    the averaged ones, which are scored when the run keeps an EMA; best.pt's "model" is the scored model already."""
    if checkpoint.get("ema"):
        return {k.removeprefix("module."): v for k, v in checkpoint["ema"].items() if k.startswith("module.")}
    return checkpoint["model"]


def _plain_numpy_state(state: dict) -> dict:
    """np.random.get_state(legacy=False) with its key array as a tensor and its numbers as Python numbers."""
    return {
        "bit_generator": str(state["bit_generator"]),
        "state": {
            "key": torch.from_numpy(np.asarray(state["state"]["key"], dtype=np.int64)),
            "pos": int(state["state"]["pos"]),
        },
        "has_gauss": int(state["has_gauss"]),
        "gauss": float(state["gauss"]),
    }


def rng_state() -> dict:
    """Python's, numpy's and torch's RNG states, as tensors and plain values."""
    return {
        "python": random.getstate(),
        "numpy": _plain_numpy_state(np.random.get_state(legacy=False)),
        "torch": torch.get_rng_state(),
    }


def restore_rng(state: dict) -> None:
    random.setstate(state["python"])
    numpy_state = state["numpy"]
    key = numpy_state["state"]["key"].numpy().astype(np.uint32)
    np.random.set_state({**numpy_state, "state": {**numpy_state["state"], "key": key}})
    torch.set_rng_state(state["torch"])


BEST_EPOCH_FILE = "best_epoch.pt"  # optim.keep "best_and_last": the best epoch on validation so far, one network


def save_best_and_last(run_dir: Path, cfg: Config) -> tuple[list[int], nn.Module]:
    """At the end of a run with optim.keep "best_and_last": best.pt becomes the soft vote (Ensemble) of the best epoch
    on validation (best_epoch.pt) and the last epoch's scored model (last.pt). When the best epoch is the last, the
    two are one network, and best.pt holds it once (a vote of it with itself predicts the same, at twice the cost).
    Returns their epochs and the model."""
    best, last = load_checkpoint(run_dir / BEST_EPOCH_FILE), load_checkpoint(run_dir / "last.pt")
    epochs = [best["epoch"] + 1, last["epoch"] + 1]  # counted from 1, as in metrics.csv
    networks = []
    for state in (best, last)[: 1 if epochs[0] == epochs[1] else 2]:
        network = build_network(cfg)
        network.load_state_dict(scored_weights(state))
        networks.append(network)
    model = (Ensemble(networks) if len(networks) == 2 else networks[0]).eval()
    save_checkpoint(run_dir / "best.pt", {"config": to_dict(cfg), "model": model.state_dict(), "epochs": epochs})
    return epochs, model


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
    BEST_EPOCH_FILE,
    "last.pt",
)


def member_dir(run_dir: str | os.PathLike, k: int) -> Path:
    """Member k's own run directory inside an ensemble run's (engine.fit)."""
    return Path(run_dir) / f"member_{k}"


def check_same_split(run_dir: str | os.PathLike, split: Split) -> None:
    """Refuse to reuse a run (its figures, its models, or its last.pt) that recorded another split than `split`:
    scored on this split's validation or local-test crops it would be scored on crops it trained on."""
    path = Path(run_dir) / "split.json"
    if path.is_file() and Split.load(path).digest() != split.digest():
        raise UserError(
            f"{run_dir}: trained on another split than the one made now (its split.json differs; since 2026-11-29 "
            "the split keeps the pairs of both seam matchers together); use a new --out"
        )


def can_resume(run_dir: str | os.PathLike) -> bool:
    """The run left a last.pt to continue from: its own, or its first member's (an ensemble run, engine.fit)."""
    return any((folder / "last.pt").is_file() for folder in (Path(run_dir), member_dir(run_dir, 0)))


def prepare_run_dir(run_dir: str | os.PathLike, resume: bool, force: bool) -> Path:
    """Refuse an existing run directory unless resuming or forced; forced, its run files are removed first
    (so no checkpoint or figure of the old run survives beside the new one)."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"{run_dir}: exists and is not a directory; name a run directory")
    if run_dir.exists() and any(run_dir.iterdir()) and not (resume or force):
        raise UserError(f"{run_dir}: run directory exists; pass --resume to continue it or --force to replace it")
    if resume and not can_resume(run_dir):
        raise UserError(f"{run_dir}: nothing to resume (no last.pt)")
    if force and not resume:
        for name in RUN_FILES:
            (run_dir / name).unlink(missing_ok=True)
        for member in run_dir.glob("member_*"):  # an ensemble run's (engine.fit)
            if member.is_dir() and member.name.removeprefix("member_").isdigit():
                shutil.rmtree(member)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def saved_config(run_dir: str | os.PathLike) -> Config | None:
    """The config.yaml a run wrote when it started (read as a checkpoint's is: fields added since keep their old
    meaning), or None when there is none."""
    saved = Path(run_dir) / "config.yaml"
    return from_dict(yaml.safe_load(saved.read_text()), source=str(saved)) if saved.is_file() else None


def run_device_name(cfg: Config, run_dir: str | os.PathLike, resume: bool) -> str:
    """The device a run trains on: a resumed run keeps the one in its own config.yaml, not the defaults'."""
    saved = saved_config(run_dir) if resume else None
    return (saved or cfg).device


def check_resume_matches_run(run_dir: str | os.PathLike, requested: Config, names: list[str]) -> None:
    """A run is resumed with the command that started it plus --resume: each of the fields `names` that the command
    sets must hold the run's own value. Raises UserError naming the first field that would change."""
    run = saved_config(run_dir)
    if run is None:
        return  # fit() says there is nothing to resume
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
