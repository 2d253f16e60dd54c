"""Training and evaluation: train_one_epoch, evaluate, fit(cfg) -> FitResult; checkpoints; schedules."""

from __future__ import annotations

import csv
import json
import math
import os
import random
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from marsseg.config import Config, from_dict, get_field, load_config, save_config, to_dict
from marsseg.data.augment import build_augmentation
from marsseg.data.dataset import SegmentationDataset, images_to_tensor, make_loader
from marsseg.data.io import NUM_CLASSES, MarsData, write_atomically, write_text_atomically
from marsseg.data.prepare import PreparedData, prepare_data, recorded_fingerprint, write_data_record
from marsseg.data.sampling import curriculum_indices, oversample_rare_class, rare_class_sampler
from marsseg.data.split import Split, group_ids
from marsseg.errors import UserError
from marsseg.losses import build_loss
from marsseg.metrics import bootstrap_miou_interval, confusion_matrices_per_image, iou_per_class, mean_iou
from marsseg.models import create_model
from marsseg.precision import autocast, resolve_precision
from marsseg.predict import labels_from_probabilities, predict_probabilities

AUX_LOSS_WEIGHT = 0.4  # weight of an auxiliary (deep-supervision) output's loss


# ---------------------------------------------------------------- set-up


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device 'cuda' requested but CUDA is not available; use --device cpu or auto")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def with_resolved_precision(cfg: Config, device: torch.device | None = None) -> Config:
    """`cfg` with "auto" precision replaced by what it means on `device` (default: the config's own). A run saves
    this, so that a resumed run keeps its precision on any machine."""
    device = resolve_device(cfg.device) if device is None else device
    return replace(cfg, precision=resolve_precision(cfg.precision, device))


def configure_threads(threads: int) -> None:
    """Intra-op threads for CPU work: `threads`, or every core when 0."""
    torch.set_num_threads(threads or os.cpu_count() or 1)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# Channels-last convolutions are faster with oneDNN on CPU, but torch 2.13's oneDNN convolution backward corrupts
# the heap ("double free") for the attention and DeepLab models at small widths (seen at 8 and 12, not at 16 or
# 32); the U-Nets are fine at every width tried.
CHANNELS_LAST_ANY_WIDTH = ("unet", "res_unet", "dual_unet")
CHANNELS_LAST_MIN_WIDTH = 32


def training_memory_format(cfg: Config, device: torch.device) -> torch.memory_format:
    if device.type == "cpu" and (
        cfg.model.name in CHANNELS_LAST_ANY_WIDTH or cfg.model.width >= CHANNELS_LAST_MIN_WIDTH
    ):
        return torch.channels_last
    return torch.contiguous_format


def build_model(cfg: Config) -> nn.Module:
    return create_model(cfg.model.name, cfg.data.in_channels, NUM_CLASSES, width=cfg.model.width, **cfg.model.options)


def ema_average(decay: float):
    """The exponential moving average step, with the decay warmed up as min(decay, (1 + n) / (10 + n)).

    Without the warm-up the average keeps the initial weights' share decay**n for a long time; batch-norm
    running variances shrink by orders of magnitude early on, so that residue alone wrecks the averaged model.
    """

    def average(averaged: torch.Tensor, current: torch.Tensor, num_averaged: torch.Tensor) -> torch.Tensor:
        n = float(num_averaged)
        weight = min(decay, (1 + n) / (10 + n))
        return averaged * weight + current * (1 - weight)

    return average


def build_optimizer(cfg: Config, model: nn.Module) -> torch.optim.Optimizer:
    optimizer_class = torch.optim.AdamW if cfg.optim.optimizer == "adamw" else torch.optim.Adam
    return optimizer_class(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)


def build_ema(cfg: Config, model: nn.Module) -> torch.optim.swa_utils.AveragedModel | None:
    """The averaged copy of `model` that is scored and saved, or None when the EMA is off."""
    if cfg.optim.ema_decay <= 0:
        return None
    return torch.optim.swa_utils.AveragedModel(model, avg_fn=ema_average(cfg.optim.ema_decay), use_buffers=True)


def lr_factor(progress: float, warmup: float, schedule: str) -> float:
    """Multiplier of the base learning rate at `progress` in [0, 1] of training.

    "cosine": linear warmup over the first `warmup` share, then a half cosine to 0.
    "onecycle": warmup to the peak over 30 %, then cosine down (the peak is the base lr).
    "cosine_restarts": warmup, then three half cosines to 0 (warm restarts), each twice as long as the one before.
    """
    progress = min(max(progress, 0.0), 1.0)
    if schedule not in ("cosine", "onecycle", "cosine_restarts"):
        return 1.0
    if schedule == "onecycle":
        warmup = 0.3
    if progress < warmup:
        return 0.1 + 0.9 * progress / warmup
    annealed = (progress - warmup) / max(1 - warmup, 1e-8)  # 0..1 after the warmup
    if schedule == "cosine_restarts":
        position = 7 * annealed  # cycles of 1, 2 and 4 sevenths
        for length in (1, 2):
            if position < length:
                break
            position -= length
        else:
            length = 4
        annealed = min(position / length, 1.0)
    return 0.5 * (1 + math.cos(math.pi * annealed))


# ---------------------------------------------------------------- one epoch, evaluation


def compute_loss(loss_fn: nn.Module, output: torch.Tensor | tuple, target: torch.Tensor) -> torch.Tensor:
    """The loss in fp32, whatever precision the model ran in."""
    if isinstance(output, tuple):
        output = tuple(o.float() for o in output)
    else:
        output = output.float()
    if isinstance(output, tuple):  # (final, auxiliary...) from deep supervision
        return loss_fn(output[0], target) + AUX_LOSS_WEIGHT * sum(loss_fn(o, target) for o in output[1:])
    return loss_fn(output, target)


def training_step(
    model: nn.Module,
    images: torch.Tensor,
    masks: torch.Tensor,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    ema=None,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
) -> torch.Tensor:
    """One optimizer step on a batch; returns the (detached) loss. Only the model runs under autocast."""
    with autocast(device, precision):
        output = model(images)
    loss = compute_loss(loss_fn, output, masks)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if ema is not None:
        ema.update_parameters(model)
    return loss.detach()


def train_one_epoch(
    model: nn.Module,
    loader,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    on_step=None,
    ema=None,
    description: str = "train",
    memory_format: torch.memory_format = torch.contiguous_format,
    show_progress: bool = True,
    precision: str = "fp32",
) -> dict:
    """One pass over `loader`. `on_step()` runs before every optimizer step (the learning-rate schedule).

    Returns the mean loss and the seconds spent waiting for data versus computing.
    """
    model.train()
    total_loss, batches, data_seconds, compute_seconds = 0.0, 0, 0.0, 0.0
    bar = tqdm(loader, desc=description, leave=False, disable=None if show_progress else True, dynamic_ncols=True)
    tick = time.perf_counter()
    for images, masks in bar:
        images, masks = images.to(device, non_blocking=True), masks.to(device, non_blocking=True)
        images = images.contiguous(memory_format=memory_format)
        start = time.perf_counter()
        data_seconds += start - tick
        if on_step is not None:
            on_step()
        loss = training_step(model, images, masks, loss_fn, optimizer, ema, device, precision)
        total_loss += loss.item()
        batches += 1
        bar.set_postfix(loss=f"{total_loss / batches:.4f}")
        tick = time.perf_counter()
        compute_seconds += tick - start
    return {"loss": total_loss / max(batches, 1), "data_seconds": data_seconds, "compute_seconds": compute_seconds}


@dataclass
class Evaluation:
    matrix: np.ndarray  # (5, 5) confusion matrix, rows = true
    miou: float
    ious: np.ndarray  # (4,) classes 1..4
    per_image_miou: np.ndarray = field(default_factory=lambda: np.zeros(0))
    predictions: np.ndarray | None = None  # (N, H, W) labels, when kept
    image_matrices: np.ndarray | None = None  # (N, 5, 5) one confusion matrix per image (for intervals)


def evaluate_probabilities(
    batches, masks: np.ndarray, keep_predictions: bool = False, big_rock_scale: float = 1.0
) -> Evaluation:
    """Score a stream of probability batches (B, C, H, W), in order, against `masks`: one confusion matrix over
    the whole set. The one place where predictions become a score."""
    per_image, kept, start = [], [], 0
    for probs in batches:
        labels = labels_from_probabilities(probs, big_rock_scale)
        truth = torch.from_numpy(masks[start : start + len(labels)]).long()
        start += len(labels)
        per_image.append(confusion_matrices_per_image(truth, labels).numpy())
        if keep_predictions:
            kept.append(labels.numpy().astype(np.uint8))
    image_matrices = np.concatenate(per_image) if per_image else np.zeros((0, NUM_CLASSES, NUM_CLASSES), np.int64)
    matrix = image_matrices.sum(axis=0)
    return Evaluation(
        matrix,
        mean_iou(matrix),
        iou_per_class(matrix),
        np.array([mean_iou(m) for m in image_matrices]) if keep_predictions else np.zeros(0),
        np.concatenate(kept) if kept else None,
        image_matrices,
    )


def evaluate(
    model: nn.Module,
    images: np.ndarray,
    masks: np.ndarray,
    in_channels: int = 1,
    tta: bool = False,
    device: torch.device | str = "cpu",
    keep_predictions: bool = False,
    batch_size: int = 128,
    big_rock_scale: float = 1.0,
    precision: str = "fp32",
) -> Evaluation:
    """Score `model` on (images, masks)."""
    batches = predict_probabilities(model, images, in_channels, batch_size, tta, device, precision=precision)
    return evaluate_probabilities(batches, masks, keep_predictions, big_rock_scale)


# ---------------------------------------------------------------- checkpoints


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


def _rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def _restore_rng(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


# ---------------------------------------------------------------- fit


@dataclass
class FitResult:
    run_dir: str
    best_val_miou: float
    best_epoch: int
    epochs_run: int
    train_seconds: float
    history: list[dict]
    test: Evaluation | None = None  # the local test part, scored once with the best checkpoint
    val: Evaluation | None = None
    model: nn.Module | None = None  # the trained model as it ended (not the best checkpoint)


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


def _write_history(path: Path, history: list[dict]) -> None:
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


@dataclass
class Ranks:
    """Where this process stands among the training processes (torchrun sets WORLD_SIZE, RANK, LOCAL_RANK)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def check_processes_per_gpu(device_name: str, processes: int) -> None:
    """On a GPU each training process of a machine needs its own GPU (NCCL fails with two ranks on one)."""
    if processes > 1 and resolve_device(device_name).type == "cuda" and processes > torch.cuda.device_count():
        raise UserError(
            f"{processes} training processes on this machine need {processes} GPUs; it has "
            f"{torch.cuda.device_count()} (use --set device=cpu to run the processes on the CPU)"
        )


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


def init_distributed(device_name: str) -> Ranks:
    """Join the process group when started by torchrun: gloo on CPU, NCCL on GPU. One process: no group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Ranks()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        cuda = resolve_device(device_name).type == "cuda"
        if cuda:
            check_processes_per_gpu(device_name, int(os.environ.get("LOCAL_WORLD_SIZE", world)))
            torch.cuda.set_device(local_rank)
        # The small reductions (confusion matrices, the stop flag) are CPU tensors: gloo carries them beside NCCL.
        dist.init_process_group("cuda:nccl,cpu:gloo" if cuda else "gloo")
    return Ranks(dist.get_rank(), dist.get_world_size(), local_rank)


def _distributed_evaluation(evaluation: Evaluation, ranks: Ranks) -> Evaluation:
    """Sum the ranks' confusion matrices (each scored its own shard) into the whole set's evaluation."""
    if ranks.world == 1:
        return evaluation
    matrix = torch.from_numpy(evaluation.matrix).clone()
    dist.all_reduce(matrix)
    return Evaluation(matrix.numpy(), mean_iou(matrix), iou_per_class(matrix))


def fit(
    cfg: Config,
    run_dir: str | os.PathLike,
    resume: bool = False,
    force: bool = False,
    prepared: PreparedData | None = None,
    on_epoch=None,
    score_test: bool = True,
) -> FitResult:
    """Train `cfg` into `run_dir`: clean -> split -> oversample -> augment -> train with early stopping.

    Started by torchrun with several processes, it trains with DistributedDataParallel: each process takes
    batch_size / processes images of every global batch; rank 0 alone writes files and logs.

    Args:
        prepared: data already cleaned and split (a search reuses one split for every trial).
        on_epoch: called as on_epoch(epoch, val_miou) after each epoch; may raise to stop (pruning).
        score_test: score the best checkpoint on the local test part at the end (the final figure only).
    """
    ranks = init_distributed(run_device_name(cfg, run_dir, resume))
    if ranks.is_main:
        run_dir = prepare_run_dir(run_dir, resume, force)
    if ranks.world > 1:
        dist.barrier()  # the run directory is ready (or refused) before any rank reads it
    run_dir = Path(run_dir)
    state = load_checkpoint(run_dir / "last.pt") if resume else None
    if state is not None:
        cfg = from_dict(state["config"], str(run_dir / "last.pt"))
    if ranks.world > 1 and cfg.optim.batch_size % ranks.world:
        raise UserError(f"optim.batch_size {cfg.optim.batch_size} must divide among {ranks.world} processes")
    if ranks.world > 1 and cfg.data.sampler != "repeat":
        raise UserError("data.sampler 'weighted' is not supported with several processes; use 'repeat'")
    configure_threads(cfg.threads or max(1, (os.cpu_count() or 1) // ranks.world))
    device = resolve_device(cfg.device)
    if device.type == "cuda" and ranks.world > 1:
        device = torch.device("cuda", ranks.local_rank)
    cfg = with_resolved_precision(cfg, device)
    seed_everything(cfg.seed)

    if resume:  # the saved split, on the same data, whatever was passed in
        prepared = prepare_data(cfg.data, Split.load(run_dir / "split.json"), recorded_fingerprint(run_dir))
    elif prepared is None:
        prepared = prepare_data(cfg.data)
    data, split = prepared.data, prepared.split
    if ranks.is_main and not resume:
        save_config(cfg, run_dir / "config.yaml")
        split.save(run_dir / "split.json")
        write_data_record(run_dir, prepared)

    # Oversampling happens here, on the training part only, after the split.
    train_indices = split.train
    sampler = None
    if cfg.data.sampler == "repeat":
        train_indices = oversample_rare_class(split.train, data.masks, cfg.data.oversample_factor)
    else:
        sampler = rare_class_sampler(split.train, data.masks, cfg.data.oversample_factor, cfg.seed)
    dataset = SegmentationDataset(
        data.images,
        data.masks,
        train_indices,
        build_augmentation(cfg.augment, cfg.seed),
        cfg.data.in_channels,
        cfg.augment.rare_crop,
        cfg.augment.rare_crop_min_scale,
    )
    batch_size = cfg.optim.batch_size // ranks.world
    drop_last = len(dataset) > cfg.optim.batch_size
    if ranks.world > 1:
        sampler = torch.utils.data.DistributedSampler(
            dataset, ranks.world, ranks.rank, shuffle=True, seed=cfg.seed, drop_last=drop_last
        )
    loader = make_loader(
        dataset, batch_size, True, cfg.seed, cfg.data.num_workers, sampler=sampler, drop_last=drop_last
    )

    memory_format = training_memory_format(cfg, device)
    model = build_model(cfg).to(device).to(memory_format=memory_format)  # identical on every rank (same seed)
    loss_fn = build_loss(cfg.loss, data.masks[split.train]).to(device)
    optimizer = build_optimizer(cfg, model)
    plateau = None
    if cfg.optim.scheduler == "plateau":
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=0.5, patience=cfg.optim.plateau_patience
        )
    ema = build_ema(cfg, model)

    steps_per_epoch = len(loader)
    total_steps = steps_per_epoch * cfg.optim.epochs
    warmup = cfg.optim.warmup_epochs / cfg.optim.epochs
    budget = cfg.optim.minutes * 60
    progress = {"step": 0, "seconds": 0.0}
    history: list[dict] = []
    best = {"miou": -1.0, "epoch": -1}
    start_epoch, stale = 0, 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if plateau is not None:
            plateau.load_state_dict(state["plateau"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        _restore_rng(state["rng"])
        history, best, stale = state["history"], state["best"], state["stale"]
        progress = state["progress"]
        start_epoch = state["epoch"] + 1
    trained = model  # the module whose weights are saved; `model` may become its DDP wrapper
    if ranks.world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model)

    def on_step() -> None:
        # The schedule follows whichever is further along: steps of the planned epochs, or the time budget.
        # Several processes follow steps only, so that every rank sets the same learning rate.
        if plateau is None:
            done = progress["step"] / total_steps
            if budget and ranks.world == 1:
                done = max(done, (progress["seconds"] + time.perf_counter() - epoch_start) / budget)
            for group in optimizer.param_groups:
                group["lr"] = cfg.optim.lr * lr_factor(done, warmup, cfg.optim.scheduler)
        progress["step"] += 1

    scored_model = ema.module if ema is not None else trained
    val_shard = split.val[ranks.rank :: ranks.world]
    epoch = start_epoch - 1
    for epoch in range(start_epoch, cfg.optim.epochs):
        stop = stale >= cfg.optim.early_stopping_patience or bool(budget and progress["seconds"] >= budget)
        if ranks.world > 1:  # rank 0's clock decides, so that no rank waits for one that stopped
            flag = torch.tensor([float(stop)])
            dist.broadcast(flag, 0)
            stop = bool(flag.item())
        if stop:
            break
        epoch_start = time.perf_counter()
        # Each epoch's augmentations are fixed by seed, epoch and rank (ranks must not draw the same sequence).
        epoch_seed = cfg.seed * 100_003 + epoch + 1_000_003 * ranks.rank
        dataset.reseed(epoch_seed)
        if cfg.data.curriculum_epochs:
            # The same draw on every rank (the DistributedSampler shares one list out), the same length every epoch
            # (so the steps and the schedule do not change); a stream of its own, apart from the augmentations'.
            dataset.indices = curriculum_indices(
                split.train,
                data.masks,
                cfg.data.oversample_factor,
                epoch,
                cfg.data.curriculum_epochs,
                [cfg.seed, epoch],
            )
        loader.generator.manual_seed(epoch_seed)
        if isinstance(sampler, torch.utils.data.DistributedSampler):
            sampler.set_epoch(epoch)
        elif sampler is not None:
            sampler.generator.manual_seed(epoch_seed)
        stats = train_one_epoch(
            model,
            loader,
            loss_fn,
            optimizer,
            device,
            on_step,
            ema,
            f"epoch {epoch + 1}/{cfg.optim.epochs}",
            memory_format,
            show_progress=ranks.is_main,
            precision=cfg.precision,
        )
        if ema is not None:
            scored_model.to(memory_format=memory_format)
        # Scored as the final figure is (same TTA), so the epoch chosen is the one that is reported and deployed.
        val = evaluate(
            scored_model,
            data.images[val_shard],
            data.masks[val_shard],
            cfg.data.in_channels,
            cfg.tta,
            device,
            precision=cfg.precision,
        )
        val = _distributed_evaluation(val, ranks)
        if plateau is not None:
            plateau.step(val.miou)
        seconds = time.perf_counter() - epoch_start
        progress["seconds"] += seconds
        record = {
            "epoch": epoch + 1,
            "lr": optimizer.param_groups[0]["lr"],
            "train_loss": round(stats["loss"], 5),
            "val_miou": round(val.miou, 5),
            "seconds": round(seconds, 2),
            "data_share": round(stats["data_seconds"] / max(seconds, 1e-9), 4),
        }
        for name, iou in zip(HISTORY_FIELDS[4:8], val.ious, strict=True):
            record[name] = round(float(iou), 5)
        history.append(record)
        improved = val.miou > best["miou"]
        if improved:
            best, stale = {"miou": val.miou, "epoch": epoch + 1}, 0
        else:
            stale += 1
        if ranks.is_main:
            tqdm.write(
                f"epoch {epoch + 1:3d}  loss {stats['loss']:.4f}  val mIoU {val.miou:.4f}  "
                f"big rock {val.ious[3]:.3f}  {seconds:5.1f}s" + ("  *best" if improved else "")
            )
            checkpoint = {
                "config": to_dict(cfg),
                "model": scored_model.state_dict(),
                "epoch": epoch,
                "best": best,
                "stale": stale,
            }
            if improved:
                save_checkpoint(run_dir / "best.pt", checkpoint)
            checkpoint.update(
                model=trained.state_dict(),
                optimizer=optimizer.state_dict(),
                history=history,
                progress=progress,
                rng=_rng_state(),
                plateau=plateau.state_dict() if plateau is not None else None,
                ema=ema.state_dict() if ema is not None else None,
            )
            save_checkpoint(run_dir / "last.pt", checkpoint)
            _write_history(run_dir / "metrics.csv", history)
        if on_epoch is not None:
            on_epoch(epoch, val.miou)

    result = FitResult(str(run_dir), best["miou"], best["epoch"], len(history), progress["seconds"], history)
    result.model = trained
    if ranks.is_main:
        from marsseg import report

        report.plot_curves(history, run_dir / "curves.png")
        if score_test:
            finish_run(result, cfg, prepared, device)
    if ranks.world > 1:
        dist.barrier()  # every rank returns once rank 0 has written its files
    return result


BIG_ROCK_SCALES = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)


def choose_big_rock_scale(
    model: nn.Module,
    images: np.ndarray,
    masks: np.ndarray,
    in_channels: int,
    tta: bool,
    device,
    precision: str = "fp32",
) -> tuple[float, dict[float, float]]:
    """The scale of BIG_ROCK_SCALES with the best validation mIoU, and every scale's mIoU."""
    batches = predict_probabilities(model, images, in_channels, tta=tta, device=device, precision=precision)
    probabilities = torch.cat(list(batches))
    return best_big_rock_scale(probabilities, masks)


def best_big_rock_scale(probabilities: torch.Tensor, masks: np.ndarray) -> tuple[float, dict[float, float]]:
    """For probabilities (N, C, H, W) of the images whose masks are `masks`: the best scale and every scale's mIoU."""
    scores = {s: evaluate_probabilities([probabilities], masks, big_rock_scale=s).miou for s in BIG_ROCK_SCALES}
    return max(scores, key=scores.get), scores


def finish_run(result: FitResult, cfg: Config, prepared: PreparedData, device: torch.device) -> None:
    """Choose the big-rock scale on validation if asked, then score the best checkpoint on validation and, once,
    on the local test part; write metrics.json."""
    from marsseg import report

    run_dir = Path(result.run_dir)
    model, _ = load_model(run_dir)
    model = model.to(device)
    data, split = prepared.data, prepared.split
    val_images, val_masks = data.images[split.val], data.masks[split.val]
    metrics = {
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "train_seconds": round(result.train_seconds, 1),
        "tta": cfg.tta,
        "precision": cfg.precision,
    }
    scale = cfg.big_rock_scale
    if scale == 0:
        scale, scores = choose_big_rock_scale(
            model, val_images, val_masks, cfg.data.in_channels, cfg.tta, device, cfg.precision
        )
        metrics["big_rock_scale_val_miou"] = {str(k): round(v, 5) for k, v in scores.items()}
        state = load_checkpoint(run_dir / "best.pt")
        state["config"]["big_rock_scale"] = scale  # predict and evaluate read it from here
        save_checkpoint(run_dir / "best.pt", state)
    metrics["big_rock_scale"] = scale
    result.val = evaluate(
        model,
        val_images,
        val_masks,
        cfg.data.in_channels,
        cfg.tta,
        device,
        big_rock_scale=scale,
        precision=cfg.precision,
    )
    metrics.update(val_miou=result.val.miou, val_iou=dict(zip(CLASS_KEYS, result.val.ious.tolist(), strict=True)))
    if len(split.test):
        result.test = evaluate(
            model,
            data.images[split.test],
            data.masks[split.test],
            cfg.data.in_channels,
            cfg.tta,
            device,
            big_rock_scale=scale,
            precision=cfg.precision,
        )
        low, high, groups = miou_interval(result.test, data.subset(split.test))
        metrics.update(
            test_miou=result.test.miou,
            test_iou=dict(zip(CLASS_KEYS, result.test.ious.tolist(), strict=True)),
            test_miou_interval90=[round(low, 4), round(high, 4)],
            test_groups=groups,
        )
        report.plot_confusion(result.test.matrix, run_dir / "confusion.png", title="local test part")
    write_text_atomically(run_dir / "metrics.json", json.dumps(metrics, indent=1))


CLASS_KEYS = ("soil", "bedrock", "sand", "big_rock")


def miou_interval(evaluation: Evaluation, data: MarsData, confidence: float = 0.9) -> tuple[float, float, int]:
    """(low, high, number of groups): a bootstrap interval of `evaluation`'s mIoU over the frame groups of the
    images it scored (`data`, in the same order). Crops of one frame are resampled together: they are not
    independent draws."""
    groups = group_ids(data)
    low, high = bootstrap_miou_interval(evaluation.image_matrices, groups, confidence)
    return low, high, len(np.unique(groups))


def overfit_one_batch(
    cfg: Config,
    batch_size: int = 32,
    target: float = 0.95,
    max_steps: int = 300,
    lr: float = 1e-3,
    check_every: int = 10,
) -> tuple[int, float]:
    """The study's first sanity check: can the model drive one fixed batch to mIoU >= `target`?

    No augmentation, no oversampling. Returns (steps taken, the batch's mIoU in eval mode at the end).
    """
    configure_threads(cfg.threads)
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    prepared = prepare_data(cfg.data)
    rng = np.random.default_rng(cfg.seed)
    chosen = rng.choice(prepared.split.train, size=min(batch_size, len(prepared.split.train)), replace=False)
    images, masks = prepared.data.images[chosen], prepared.data.masks[chosen]
    x = images_to_tensor(images, cfg.data.in_channels).to(device)
    y = torch.from_numpy(masks).long().to(device)
    model = build_model(cfg).to(device)
    loss_fn = build_loss(cfg.loss, masks).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    miou, step = 0.0, 0
    precision = resolve_precision(cfg.precision, device)
    bar = tqdm(range(1, max_steps + 1), desc="overfit one batch", leave=False, disable=None)
    for step in bar:
        model.train()
        loss = training_step(model, x, y, loss_fn, optimizer, device=device, precision=precision)
        if step % check_every == 0 or step == max_steps:
            miou = evaluate(model, images, masks, cfg.data.in_channels, device=device, precision=precision).miou
            bar.set_postfix(loss=f"{loss.item():.4f}", miou=f"{miou:.3f}")
            if miou >= target:
                break
    return step, miou
