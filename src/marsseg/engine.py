"""fit(cfg) -> FitResult: one training run, from the data to the scored best checkpoint, and finish_run, its final
scores. The parts have files of their own: training.py (the step, the epoch, the model, optimizer and schedule),
evaluation.py (scoring), checkpoints.py (run files, best.pt and last.pt) and distributed.py (several processes).
"""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from marsseg.checkpoints import (
    HISTORY_FIELDS,
    load_checkpoint,
    load_model,
    prepare_run_dir,
    run_device_name,
    save_checkpoint,
    write_history,
)
from marsseg.config import Config, from_dict, save_config, to_dict
from marsseg.data.augment import build_augmentation
from marsseg.data.dataset import SegmentationDataset, make_loader
from marsseg.data.io import write_text_atomically
from marsseg.data.prepare import PreparedData, prepare_data, recorded_fingerprint, write_data_record
from marsseg.data.sampling import curriculum_indices, oversample_rare_class, rare_class_sampler
from marsseg.data.split import Split
from marsseg.distributed import init_distributed, summed_evaluation
from marsseg.errors import UserError
from marsseg.evaluation import CLASS_KEYS, Evaluation, choose_big_rock_scale, evaluate, miou_interval
from marsseg.losses import build_loss
from marsseg.training import (
    build_ema,
    build_model,
    build_optimizer,
    configure_threads,
    lr_factor,
    resolve_device,
    seed_everything,
    train_one_epoch,
    training_memory_format,
    with_resolved_precision,
)


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
        val = summed_evaluation(val, ranks)
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
            write_history(run_dir / "metrics.csv", history)
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
