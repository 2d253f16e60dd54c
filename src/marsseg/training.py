"""Training: one step (training_step) and one epoch (train_one_epoch), and what they need: device, threads, seed
and precision; the model, its optimizer, its averaged (EMA) copy and the learning-rate schedule; the state a run
changes as it trains (TrainingState).
"""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from marsseg.checkpoints import BEST_EPOCH_FILE, restore_rng, rng_state, save_checkpoint
from marsseg.config import Config, to_dict
from marsseg.losses import BACKGROUND, pseudo_label_loss, soft_target_loss
from marsseg.models import build_network, final_logits
from marsseg.precision import autocast, resolve_device, resolve_precision
from marsseg.semi import PseudoLabeled, UnlabeledStream

AUX_LOSS_WEIGHT = 0.4  # weight of an auxiliary (deep-supervision) output's loss


# ---------------------------------------------------------------- set-up


def with_resolved_precision(cfg: Config, *, device: torch.device | None = None) -> Config:
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


@dataclass
class TrainingState:
    """What a run changes as it trains. last.pt saves all of it (checkpoints.py), so that a resumed run continues
    exactly where it stopped."""

    model: nn.Module  # the module whose weights are saved (fit may wrap it in DistributedDataParallel)
    optimizer: torch.optim.Optimizer
    plateau: torch.optim.lr_scheduler.ReduceLROnPlateau | None  # the "plateau" schedule; None for the others
    ema: torch.optim.swa_utils.AveragedModel | None
    history: list[dict] = field(default_factory=list)  # one record per epoch, as in metrics.csv
    best: dict = field(default_factory=lambda: {"miou": -1.0, "epoch": -1})  # epoch counted from 1
    stale: int = 0  # epochs since the best one (early stopping)
    progress: dict = field(default_factory=lambda: {"step": 0, "seconds": 0.0})  # steps taken, seconds trained
    epoch: int = -1  # the last epoch finished, counted from 0

    @property
    def scored_model(self) -> nn.Module:
        """The model that is scored and saved as best.pt: the average when there is one."""
        return self.ema.module if self.ema is not None else self.model


def build_training_state(cfg: Config, device: torch.device, memory_format: torch.memory_format) -> TrainingState:
    """A fresh model (initialised from the global torch seed), its optimizer, plateau schedule and EMA."""
    model = build_network(cfg).to(device).to(memory_format=memory_format)
    optimizer = build_optimizer(cfg, model)
    plateau = None
    if cfg.optim.scheduler == "plateau":
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=0.5, patience=cfg.optim.plateau_patience
        )
    return TrainingState(model, optimizer, plateau, build_ema(cfg, model))


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


# ---------------------------------------------------------------- one step, one epoch


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
    *,
    ema=None,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    unlabeled: PseudoLabeled | None = None,
) -> torch.Tensor:
    """One optimizer step on a batch; returns the (detached) loss. Only the model runs under autocast.

    With `unlabeled` (semi.py), its strong views go through the same forward pass (one set of batch-norm statistics
    for both, as in FixMatch) and add their weighted pseudo-label loss.
    """
    if unlabeled is not None:
        images = torch.cat([images, unlabeled.images])
    with autocast(device, precision):
        output = model(images)
    if unlabeled is None:
        loss = compute_loss(loss_fn, output, masks)
    else:
        labeled = len(masks)
        final = final_logits(output)
        if isinstance(output, tuple):  # deep supervision: auxiliary outputs are trained on labeled crops only
            output = tuple(o[:labeled] for o in output)
        else:
            output = output[:labeled]
        loss = compute_loss(loss_fn, output, masks)
        if unlabeled.loss == "recipe":  # pseudo-labels as labels; an unsure pixel counts as background, not scored
            pseudo = compute_loss(loss_fn, final[labeled:], unlabeled.targets.clamp(min=BACKGROUND))
        elif unlabeled.loss == "soft":  # the teachers' probabilities of classes 1..4 on every pixel
            pseudo = soft_target_loss(final[labeled:], unlabeled.targets)
        else:
            pseudo = pseudo_label_loss(final[labeled:], unlabeled.targets)
        loss = loss + unlabeled.weight * pseudo
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
    *,
    device: torch.device,
    on_step=None,
    ema=None,
    description: str = "train",
    memory_format: torch.memory_format = torch.contiguous_format,
    show_progress: bool = True,
    precision: str = "fp32",
    unlabeled: UnlabeledStream | None = None,
) -> dict:
    """One pass over `loader`. `on_step()` runs before every optimizer step (the learning-rate schedule); with
    `unlabeled`, every step also trains on a pseudo-labeled batch of it, labeled by the EMA (else the model).

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
        extra = None
        if unlabeled is not None:
            extra = unlabeled.next_batch(ema.module if ema is not None else model, memory_format=memory_format)
        loss = training_step(
            model, images, masks, loss_fn, optimizer, ema=ema, device=device, precision=precision, unlabeled=extra
        )
        total_loss += loss.item()
        batches += 1
        bar.set_postfix(loss=f"{total_loss / batches:.4f}")
        tick = time.perf_counter()
        compute_seconds += tick - start
    return {"loss": total_loss / max(batches, 1), "data_seconds": data_seconds, "compute_seconds": compute_seconds}


# ---------------------------------------------------------------- the training state in last.pt


def save_epoch_checkpoints(run_dir: Path, cfg: Config, state: TrainingState, improved: bool) -> None:
    """At the end of an epoch: the scored model alone, to best.pt if the run keeps this epoch's (optim.keep "best":
    when it `improved` on validation; "last": every epoch's in turn), or with "best_and_last" to best_epoch.pt when it
    improved (save_best_and_last makes best.pt at the end); then last.pt, which adds the optimizer, schedule, EMA,
    history, progress and RNG states that a resumed run continues from."""
    checkpoint = {
        "config": to_dict(cfg),
        "model": state.scored_model.state_dict(),
        "epoch": state.epoch,
        "best": state.best,
        "stale": state.stale,
    }
    if cfg.optim.keep == "last" or (improved and cfg.optim.keep == "best"):
        save_checkpoint(run_dir / "best.pt", checkpoint)
    elif improved and cfg.optim.keep == "best_and_last":
        save_checkpoint(run_dir / BEST_EPOCH_FILE, checkpoint)
    checkpoint.update(
        model=state.model.state_dict(),
        optimizer=state.optimizer.state_dict(),
        history=state.history,
        progress=state.progress,
        rng=rng_state(),
        plateau=state.plateau.state_dict() if state.plateau is not None else None,
        ema=state.ema.state_dict() if state.ema is not None else None,
    )
    save_checkpoint(run_dir / "last.pt", checkpoint)


def restore_training_state(state: TrainingState, checkpoint: dict) -> None:
    """Continue from `checkpoint` (a last.pt): weights, optimizer, schedule, EMA and RNG streams, and the run's
    history, best epoch and progress."""
    state.model.load_state_dict(checkpoint["model"])
    state.optimizer.load_state_dict(checkpoint["optimizer"])
    if state.plateau is not None:
        state.plateau.load_state_dict(checkpoint["plateau"])
    if state.ema is not None:
        state.ema.load_state_dict(checkpoint["ema"])
    restore_rng(checkpoint["rng"])
    state.history, state.best, state.stale = checkpoint["history"], checkpoint["best"], checkpoint["stale"]
    state.progress = checkpoint["progress"]
    state.epoch = checkpoint["epoch"]
