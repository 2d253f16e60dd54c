"""fit(cfg) -> FitResult: one training run, from the data to the scored model it keeps (best.pt).

fit puts together the parts that have files of their own: training.py (the step, the epoch, the model, optimizer
and schedule), evaluation.py (scoring), checkpoints.py (run files, best.pt and last.pt, resuming),
distributed.py (several processes) and finish.py (the final scores). What is left here is the run's own plumbing:
its data, the training loader and its per-epoch seeds, the learning rate at each step, and each epoch's record.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Sampler
from tqdm import tqdm

from marsseg.checkpoints import (
    HISTORY_FIELDS,
    load_checkpoint,
    load_model,
    member_dir,
    prepare_run_dir,
    run_device_name,
    save_best_and_last,
    save_checkpoint,
    saved_config,
    write_history,
)
from marsseg.config import Config, from_dict, inference_settings, one_network, save_config, to_dict
from marsseg.data.augment import build_augmentation
from marsseg.data.dataset import SegmentationDataset, make_loader
from marsseg.data.frames import whole_frame_units
from marsseg.data.prepare import PreparedData, prepare_data, recorded_fingerprint, write_data_record
from marsseg.data.sampling import curriculum_indices, oversample_rare_class, rare_class_sampler
from marsseg.data.split import Split, frame_halves, frames_among
from marsseg.distributed import (
    Ranks,
    check_config_for_ranks,
    decided_by_main,
    frame_shard,
    init_distributed,
    process_device,
    summed_evaluation,
)
from marsseg.errors import UserError
from marsseg.evaluation import Evaluation, evaluate
from marsseg.finish import finish_run, predict_validation
from marsseg.losses import build_loss
from marsseg.models import Ensemble
from marsseg.semi import UnlabeledStream
from marsseg.teachers import build_unlabeled_stream
from marsseg.training import (
    TrainingState,
    build_training_state,
    configure_threads,
    lr_factor,
    restore_training_state,
    save_epoch_checkpoints,
    seed_everything,
    train_one_epoch,
    training_memory_format,
    with_resolved_precision,
)


@dataclass
class FitResult:
    run_dir: str
    best_val_miou: float
    # with optim.keep "best_and_last" [best, last]; an ensemble run (engine.fit): each member's
    best_epoch: int | list[int] | list[list[int]]
    epochs_run: int
    train_seconds: float
    history: list[dict]
    test: Evaluation | None = None  # the local test part, scored once with best.pt, the kept model
    val: Evaluation | None = None
    # the trained model as it ended (not necessarily best.pt); an ensemble run's: the vote of its members' best
    model: nn.Module | None = None
    members: list[FitResult] = field(default_factory=list)  # an ensemble run's members, in order


def fit(
    cfg: Config,
    run_dir: str | os.PathLike,
    *,
    resume: bool = False,
    force: bool = False,
    prepared: PreparedData | None = None,
    on_epoch=None,
    score_test: bool = True,
) -> FitResult:
    """Train `cfg` into `run_dir`: clean -> split -> oversample -> augment -> train (early stopping if asked).

    Started by torchrun with several processes, it trains with DistributedDataParallel: each process takes
    batch_size / processes images of every global batch; rank 0 alone writes files and logs.

    The run starts once (its directory, device, precision, data and split) and ends once (best.pt, curves.png and,
    with `score_test`, finish.py's figures); in between it trains one network, or with model.members > 1 (in the
    run's own config when resuming) the members one after another (see "ensemble runs" below), whose soft vote is
    the run's model.

    Args:
        prepared: data already cleaned and split (a search reuses one split for every trial).
        on_epoch: called as on_epoch(epoch, val_miou) after each epoch; may raise to stop (pruning). Member k's
            epochs are numbered from k * optim.epochs.
        score_test: score the kept model (best.pt) on the local test part at the end (the final figure only).
    """
    ensemble = run_is_ensemble(cfg, run_dir, resume)
    ranks = init_distributed(run_device_name(cfg, run_dir, resume))
    check_config_for_ranks(cfg, ranks)  # before the run directory is written
    if ranks.is_main:
        run_dir = prepare_run_dir(run_dir, resume, force)
    if ranks.world > 1:
        dist.barrier()  # the run directory is ready (or refused) before any rank reads it
    run_dir = Path(run_dir)
    if resume:
        cfg = _run_config(cfg, run_dir, resume, ensemble)
        check_config_for_ranks(cfg, ranks)
    device = process_device(cfg.device, ranks)
    cfg = with_resolved_precision(cfg, device=device)  # config.yaml records what "auto" means here
    if not ensemble:
        _seed_process(cfg, ranks)
    prepared = run_data(cfg, run_dir, resume, prepared, ranks)
    if ensemble:
        result = _train_members(cfg, run_dir, prepared, device, ranks, resume=resume, on_epoch=on_epoch)
    else:
        state = _train_network(cfg, run_dir, prepared, device, ranks, resume=resume, on_epoch=on_epoch)
        result = _network_result(cfg, run_dir, state)
    if ranks.is_main:
        vote_val = _save_kept_model(cfg, run_dir, prepared, device, result)
        if score_test:
            result.val, result.test = finish_run(
                run_dir,
                cfg,
                prepared,
                device,
                result.best_epoch,
                result.epochs_run,
                result.train_seconds,
                val_probabilities=vote_val,
            )
    if ranks.world > 1:
        dist.barrier()  # every rank returns once rank 0 has written its files
    return result


def _seed_process(cfg: Config, ranks: Ranks) -> None:
    """Before a network's data and model are built: this process's share of the CPU threads, and every seed."""
    configure_threads(cfg.threads or max(1, (os.cpu_count() or 1) // ranks.world))
    seed_everything(cfg.seed)


def _run_config(cfg: Config, run_dir: str | os.PathLike, resume: bool, ensemble: bool) -> Config:
    """The config the run trains with: `cfg`, or a resumed run's own (a network's from last.pt, an ensemble run's
    from config.yaml)."""
    if not resume:
        return cfg
    if ensemble:
        saved = saved_config(run_dir)
        if saved is None:
            raise UserError(f"{run_dir}: nothing to resume (no config.yaml)")
        return saved
    last = load_checkpoint(Path(run_dir) / "last.pt")
    saved = from_dict(last["config"], source=str(Path(run_dir) / "last.pt"))
    if saved.model.members > 1:  # an older marsseg trained an ensemble's members side by side
        raise UserError(
            f"{run_dir}: its {saved.model.members} members were trained side by side by an older marsseg, which "
            "cannot be resumed; evaluate, predict and export still read it; start a new run with --force"
        )
    return saved


def _train_network(
    cfg: Config,
    run_dir: Path,
    prepared: PreparedData,
    device: torch.device,
    ranks: Ranks,
    *,
    resume: bool,
    on_epoch=None,
) -> TrainingState:
    """Train one network of `cfg` on the training part, epoch by epoch, from its last.pt when `resume`; each epoch's
    checkpoints and record go to `run_dir`. Returns its state as training ended."""
    dataset, sampler, loader = _training_loader(cfg, prepared, ranks)
    unlabeled = build_unlabeled_stream(cfg, prepared, device, processes=ranks.world, progress=ranks.is_main)
    memory_format = training_memory_format(cfg, device)
    state = build_training_state(cfg, device, memory_format)  # identical on every rank (same seed)
    loss_fn = build_loss(cfg.loss, prepared.data.masks[prepared.split.train]).to(device)
    if resume:
        restore_training_state(state, load_checkpoint(run_dir / "last.pt"))
    model = torch.nn.parallel.DistributedDataParallel(state.model) if ranks.world > 1 else state.model
    total_steps = len(loader) * cfg.optim.epochs
    val_shard = _validation_shard(cfg, prepared, ranks)
    for epoch in range(state.epoch + 1, cfg.optim.epochs):
        if _time_to_stop(cfg, state, ranks):
            break
        epoch_start = time.perf_counter()
        _seed_epoch(cfg, epoch, ranks, prepared, dataset, sampler, loader, unlabeled=unlabeled)
        on_step = _lr_schedule(cfg, state, total_steps, ranks, epoch_start)
        stats = train_one_epoch(
            model,
            loader,
            loss_fn,
            state.optimizer,
            device=device,
            on_step=on_step,
            ema=state.ema,
            description=f"epoch {epoch + 1}/{cfg.optim.epochs}",
            memory_format=memory_format,
            show_progress=ranks.is_main,
            precision=cfg.precision,
            unlabeled=unlabeled,
        )
        val = _validate(cfg, state, prepared, val_shard, device, memory_format, ranks)
        _end_epoch(cfg, run_dir, state, epoch, stats, val, epoch_start, ranks)
        if on_epoch is not None:
            on_epoch(epoch, val.miou)
    return state


def _network_result(cfg: Config, run_dir: Path, state: TrainingState) -> FitResult:
    best = kept_epoch(cfg, state)
    result = FitResult(
        str(run_dir), best["miou"], best["epoch"], len(state.history), state.progress["seconds"], state.history
    )
    result.model = state.model
    return result


def _save_kept_model(
    cfg: Config, run_dir: Path, prepared: PreparedData, device: torch.device, result: FitResult
) -> list[torch.Tensor] | None:
    """On rank 0, at the end of a run: best.pt where it is a vote (of a network's best epoch and its last, or of
    an ensemble run's members) and curves.png. Returns the vote's validation probabilities, predicted once for its
    figure (without the big-rock scale, as an epoch's) and finish_run's, or None for a network's best epoch alone."""
    from marsseg import report  # matplotlib: imported where a picture is drawn

    vote_val = None
    if result.members:
        save_checkpoint(run_dir / "best.pt", {"config": to_dict(cfg), "model": result.model.state_dict()})
        vote_val, result.best_val_miou = predict_validation(result.model, cfg, prepared, device)
        report.plot_member_curves([m.history for m in result.members], result.best_val_miou, run_dir / "curves.png")
        return vote_val
    if cfg.optim.keep == "best_and_last":  # best.pt: the vote of the best epoch and the last
        result.best_epoch, vote = save_best_and_last(run_dir, cfg)
        vote_val, result.best_val_miou = predict_validation(vote, cfg, prepared, device)
    report.plot_curves(result.history, run_dir / "curves.png")
    return vote_val


def run_is_ensemble(cfg: Config, run_dir: str | os.PathLike, resume: bool) -> bool:
    """A resumed run is what it was, whatever today's default number of members: one network's run has a last.pt
    of its own, an ensemble run's are in its members' folders."""
    if resume:
        return not (Path(run_dir) / "last.pt").is_file() and member_dir(run_dir, 0).is_dir()
    return cfg.model.members > 1


def run_data(cfg: Config, run_dir: Path, resume: bool, prepared: PreparedData | None, ranks: Ranks) -> PreparedData:
    """The data cleaned and split; a new run records config, split and data in `run_dir`, a resumed one reads them."""
    if resume:  # the saved split, on the same data, whatever was passed in
        prepared = prepare_data(
            cfg.data, split=Split.load(run_dir / "split.json"), expected_fingerprint=recorded_fingerprint(run_dir)
        )
    elif prepared is None:
        prepared = prepare_data(cfg.data)
    if ranks.is_main and not resume:
        save_config(cfg, run_dir / "config.yaml")
        prepared.split.save(run_dir / "split.json")
        write_data_record(run_dir, prepared)
    return prepared


def _training_loader(
    cfg: Config, prepared: PreparedData, ranks: Ranks
) -> tuple[SegmentationDataset, Sampler | None, DataLoader]:
    """The training part, oversampled and augmented, in this process's share of every batch."""
    data, split = prepared.data, prepared.split
    images, masks, train_indices = data.images, data.masks, split.train
    below = None  # the frames whose halves are both in the training part, for augment.frame_shift
    if cfg.data.train_on_frames:  # units of two crops' height: frames (found among training crops), and lone crops
        images, masks = data.images[split.train], data.masks[split.train]
        images, masks = whole_frame_units(images, masks, frame_halves(images))
        train_indices = np.arange(len(images))
    elif cfg.augment.frame_shift > 0:
        below = frames_among(data.images, split.train)
    # Oversampling happens here, on the training part only, after the split.
    sampler = None
    if cfg.data.sampler == "repeat":
        train_indices = oversample_rare_class(train_indices, masks, cfg.data.oversample_factor)
    else:
        sampler = rare_class_sampler(train_indices, masks, cfg.data.oversample_factor, cfg.seed)
    dataset = SegmentationDataset(
        images,
        masks,
        train_indices,
        pipeline=build_augmentation(cfg.augment, seed=cfg.seed),
        in_channels=cfg.data.in_channels,
        rare_crop=cfg.augment.rare_crop,
        rare_crop_min_scale=cfg.augment.rare_crop_min_scale,
        copy_paste=cfg.augment.copy_paste,
        copy_paste_count=cfg.augment.copy_paste_count,
        cutmix=cfg.augment.cutmix,
        frame_shift=cfg.augment.frame_shift,
        below=below,
    )
    batch_size = cfg.optim.batch_size // ranks.world
    drop_last = len(dataset) > cfg.optim.batch_size
    if ranks.world > 1:
        sampler = DistributedSampler(dataset, ranks.world, ranks.rank, shuffle=True, seed=cfg.seed, drop_last=drop_last)
    loader = make_loader(
        dataset, batch_size, True, cfg.seed, num_workers=cfg.data.num_workers, sampler=sampler, drop_last=drop_last
    )
    return dataset, sampler, loader


def _time_to_stop(cfg: Config, state: TrainingState, ranks: Ranks) -> bool:
    """Early stopping, or the time budget spent. Rank 0's clock decides, so that no rank waits for one that stopped."""
    budget = cfg.optim.minutes * 60
    patience = cfg.optim.early_stopping_patience
    stop = bool(patience and state.stale >= patience) or bool(budget and state.progress["seconds"] >= budget)
    return decided_by_main(stop, ranks)


def _seed_epoch(
    cfg: Config,
    epoch: int,
    ranks: Ranks,
    prepared: PreparedData,
    dataset: SegmentationDataset,
    sampler: Sampler | None,
    loader: DataLoader,
    *,
    unlabeled: UnlabeledStream | None = None,
) -> None:
    """Fix the epoch's augmentations, curriculum draw, order and unlabeled draws by seed and epoch, so that a resumed
    run draws what an uninterrupted one would have."""
    # Each epoch's augmentations are fixed by seed, epoch and rank (ranks must not draw the same sequence).
    epoch_seed = cfg.seed * 100_003 + epoch + 1_000_003 * ranks.rank
    dataset.reseed(epoch_seed)
    if unlabeled is not None:
        unlabeled.reseed(epoch_seed)
    if cfg.data.curriculum_epochs:
        # The same draw on every rank (the DistributedSampler shares one list out), the same length every epoch
        # (so the steps and the schedule do not change); a stream of its own, apart from the augmentations'.
        dataset.indices = curriculum_indices(
            prepared.split.train,
            prepared.data.masks,
            cfg.data.oversample_factor,
            epoch,
            cfg.data.curriculum_epochs,
            [cfg.seed, epoch],
        )
    loader.generator.manual_seed(epoch_seed)
    if isinstance(sampler, DistributedSampler):
        sampler.set_epoch(epoch)
    elif sampler is not None:
        sampler.generator.manual_seed(epoch_seed)


def _lr_schedule(
    cfg: Config, state: TrainingState, total_steps: int, ranks: Ranks, epoch_start: float
) -> Callable[[], None]:
    """The function that sets the learning rate before each step of the epoch that began at `epoch_start`."""
    warmup = cfg.optim.warmup_epochs / cfg.optim.epochs
    budget = cfg.optim.minutes * 60

    def on_step() -> None:
        # The schedule follows whichever is further along: steps of the planned epochs, or the time budget.
        # Several processes follow steps only, so that every rank sets the same learning rate.
        if state.plateau is None:
            done = state.progress["step"] / total_steps
            if budget and ranks.world == 1:
                done = max(done, (state.progress["seconds"] + time.perf_counter() - epoch_start) / budget)
            for group in state.optimizer.param_groups:
                group["lr"] = cfg.optim.lr * lr_factor(done, warmup, cfg.optim.scheduler)
        state.progress["step"] += 1

    return on_step


def _validation_shard(cfg: Config, prepared: PreparedData, ranks: Ranks) -> tuple[np.ndarray, np.ndarray | None]:
    """This rank's share of the validation part, found once a run: its indices, and with whole_frames the pairs of
    halves among them (the two halves of a frame go to one rank, to be predicted together)."""
    val = prepared.split.val
    if not cfg.whole_frames:
        return val[ranks.rank :: ranks.world], None
    positions, frames = frame_shard(frame_halves(prepared.data.images[val]), ranks)
    return val[positions], frames


def _validate(
    cfg: Config,
    state: TrainingState,
    prepared: PreparedData,
    shard: tuple[np.ndarray, np.ndarray | None],
    device: torch.device,
    memory_format: torch.memory_format,
    ranks: Ranks,
) -> Evaluation:
    """The scored model on this rank's `shard` of the validation part (_validation_shard); the matrices are summed."""
    if state.ema is not None:
        state.scored_model.to(memory_format=memory_format)
    indices, frames = shard
    # Scored with the final figure's TTA, so the epoch chosen is the one that is reported and deployed (in the
    # training precision: this is part of training; the final figures use inference_precision).
    images, masks = prepared.data.images[indices], prepared.data.masks[indices]
    settings = inference_settings(cfg, precision=cfg.precision)  # part of training: in its precision
    val = evaluate(state.scored_model, images, masks, settings=settings, device=device, frames=frames)
    return summed_evaluation(val, ranks)


def _end_epoch(
    cfg: Config,
    run_dir: Path,
    state: TrainingState,
    epoch: int,
    stats: dict,
    val: Evaluation,
    epoch_start: float,
    ranks: Ranks,
) -> None:
    """The epoch's bookkeeping: the plateau schedule, its record in the history, the best epoch and early stopping's
    count; on rank 0, its log line, checkpoints and metrics.csv."""
    if state.plateau is not None:
        state.plateau.step(val.miou)
    seconds = time.perf_counter() - epoch_start
    state.progress["seconds"] += seconds
    record = {
        "epoch": epoch + 1,
        "lr": state.optimizer.param_groups[0]["lr"],
        "train_loss": round(stats["loss"], 5),
        "val_miou": round(val.miou, 5),
        "seconds": round(seconds, 2),
        "data_share": round(stats["data_seconds"] / max(seconds, 1e-9), 4),
    }
    for name, iou in zip(HISTORY_FIELDS[4:8], val.ious, strict=True):
        record[name] = round(float(iou), 5)
    state.history.append(record)
    improved = val.miou > state.best["miou"]
    if improved:
        state.best, state.stale = {"miou": val.miou, "epoch": epoch + 1}, 0
    else:
        state.stale += 1
    state.epoch = epoch
    if ranks.is_main:
        tqdm.write(
            f"epoch {epoch + 1:3d}  loss {stats['loss']:.4f}  val mIoU {val.miou:.4f}  "
            f"big rock {val.ious[3]:.3f}  {seconds:5.1f}s" + ("  *best" if improved else "")
        )
        save_epoch_checkpoints(run_dir, cfg, state, improved)
        write_history(run_dir / "metrics.csv", state.history)


def kept_epoch(cfg: Config, state: TrainingState) -> dict:
    """The epoch whose model is the run's (best.pt) and its validation mIoU: the best on validation, or with
    optim.keep "last" the last one trained. With "best_and_last", the best's (the vote's is _save_kept_model's)."""
    if cfg.optim.keep == "last" and state.history:
        return {"miou": state.history[-1]["val_miou"], "epoch": state.history[-1]["epoch"]}
    return state.best


# ---------------------------------------------------------------- ensemble runs
# An ensemble run (model.members > 1): the members train one after another, each a whole run of its own in
# RUN/member_K (seed + K, its own kept model (optim.keep), its share of a time budget), then their soft vote
# (models.Ensemble) is the run's best.pt: one model to scoring, predict, evaluate and export. Its big-rock scale is
# chosen on validation and it is scored once on the local test part, as a single network's run is (finish.py).
# An interrupted run resumes at the member it had reached.


def member_config(cfg: Config, k: int, *, minutes_spent: float = 0.0) -> Config:
    """Member k's recipe: the run's, for one network, from seed + k. With a time budget (optim.minutes), its share
    is what the members before it left, split evenly among it and those after it (at least 0.01 minutes, one epoch:
    0 would mean no budget)."""
    minutes = cfg.optim.minutes and max((cfg.optim.minutes - minutes_spent) / (cfg.model.members - k), 0.01)
    return dataclasses.replace(
        one_network(cfg), seed=cfg.seed + k, optim=dataclasses.replace(cfg.optim, minutes=minutes)
    )


def _train_members(
    cfg: Config,
    run_dir: Path,
    prepared: PreparedData,
    device: torch.device,
    ranks: Ranks,
    *,
    resume: bool,
    on_epoch=None,
) -> FitResult:
    """Train the members of an ensemble run one after another, each in its own folder (member_K) with its own
    records, and return the run's result, whose model is their vote. A resumed run continues each member that has a
    last.pt (a finished one stops at once; a member keeps the time share it started with) and starts the others."""
    members = []
    for k in range(cfg.model.members):
        path = member_dir(run_dir, k)
        if ranks.is_main:
            print(f"{path.name} ({k + 1} of {cfg.model.members}, seed {cfg.seed + k}): {path}", flush=True)
        member_resume = resume and (path / "last.pt").is_file()
        member_cfg = member_config(cfg, k, minutes_spent=sum(m.train_seconds for m in members) / 60)
        if member_resume:
            member_cfg = _run_config(member_cfg, path, True, False)
        member_cfg = with_resolved_precision(member_cfg, device=device)
        if ranks.is_main:
            prepare_run_dir(path, member_resume, True)
        if ranks.world > 1:
            dist.barrier()
        _seed_process(member_cfg, ranks)
        member_data = run_data(member_cfg, path, member_resume, prepared, ranks)
        numbered = None if on_epoch is None else functools.partial(_numbered, on_epoch, k * cfg.optim.epochs)
        state = _train_network(member_cfg, path, member_data, device, ranks, resume=member_resume, on_epoch=numbered)
        member = _network_result(member_cfg, path, state)
        if ranks.is_main:
            _save_kept_model(member_cfg, path, member_data, device, member)
        if ranks.world > 1:
            dist.barrier()
        members.append(member)
    ensemble = Ensemble([load_model(member.run_dir)[0] for member in members]).to(device)
    result = FitResult(
        str(run_dir),
        float("nan"),
        [member.best_epoch for member in members],
        sum(member.epochs_run for member in members),
        sum(member.train_seconds for member in members),
        [],
        model=ensemble,
    )
    result.members = members
    return result


def _numbered(on_epoch, offset: int, epoch: int, val_miou: float) -> None:
    on_epoch(offset + epoch, val_miou)
