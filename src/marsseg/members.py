"""An ensemble run (model.members > 1): the members train one after another, each a whole run of its own in
RUN/member_K (seed + K, its own kept model (optim.keep), its share of a time budget), then their soft vote
(models.Ensemble) is the run's best.pt: one model to scoring, predict, evaluate and export. Its big-rock scale is
chosen on validation and it is scored once on the local test part, as a single network's run is (finish.py).
An interrupted run resumes at the member it had reached."""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path

import torch.distributed as dist

from marsseg.checkpoints import (
    load_model,
    member_dir,
    prepare_run_dir,
    run_device_name,
    save_checkpoint,
    saved_config,
)
from marsseg.config import Config, one_network, to_dict
from marsseg.data.prepare import PreparedData
from marsseg.distributed import check_config_for_ranks, init_distributed, process_device
from marsseg.errors import UserError
from marsseg.finish import finish_run, predict_validation
from marsseg.models import Ensemble
from marsseg.training import with_resolved_precision


def member_config(cfg: Config, k: int, minutes_spent: float = 0.0) -> Config:
    """Member k's recipe: the run's, for one network, from seed + k. With a time budget (optim.minutes), its share
    is what the members before it left, split evenly among it and those after it (at least 0.01 minutes, one epoch:
    0 would mean no budget)."""
    minutes = cfg.optim.minutes and max((cfg.optim.minutes - minutes_spent) / (cfg.model.members - k), 0.01)
    return dataclasses.replace(
        one_network(cfg), seed=cfg.seed + k, optim=dataclasses.replace(cfg.optim, minutes=minutes)
    )


def fit_members(
    cfg: Config,
    run_dir: str | os.PathLike,
    resume: bool,
    force: bool,
    prepared: PreparedData | None,
    on_epoch=None,
    score_test: bool = True,
):
    """engine.fit for model.members > 1 (engine.fit calls it): train the members, save and score their vote.

    A resumed run reads its own config, split and data record from `run_dir`; each member that has a last.pt
    continues from it (a finished one stops at once; a member keeps the time share it started with), the others
    start. `on_epoch(epoch, val_miou)` sees every member's epochs, member k's numbered from k * optim.epochs.
    """
    from marsseg.engine import FitResult, fit, run_data

    ranks = init_distributed(run_device_name(cfg, run_dir, resume))
    if resume:  # the run's own recipe, as a single network's resume reads it from last.pt
        cfg = saved_config(run_dir)
        if cfg is None:
            raise UserError(f"{run_dir}: nothing to resume (no config.yaml)")
    check_config_for_ranks(cfg, ranks)  # before the run directory is written
    if ranks.is_main:
        run_dir = prepare_run_dir(run_dir, resume, force)
    if ranks.world > 1:
        dist.barrier()
    run_dir = Path(run_dir)
    device = process_device(cfg.device, ranks)
    cfg = with_resolved_precision(cfg, device)  # config.yaml records what "auto" means here, as a single run's does
    prepared = run_data(cfg, run_dir, resume, prepared, ranks)
    members = []
    for k in range(cfg.model.members):
        path = member_dir(run_dir, k)
        if ranks.is_main:
            print(f"{path.name} ({k + 1} of {cfg.model.members}, seed {cfg.seed + k}): {path}", flush=True)
        member_resume = resume and (path / "last.pt").is_file()
        member_cfg = member_config(cfg, k, sum(m.train_seconds for m in members) / 60)
        numbered = None if on_epoch is None else functools.partial(_numbered, on_epoch, k * cfg.optim.epochs)
        members.append(fit(member_cfg, path, member_resume, True, prepared, numbered, score_test=False))
    ensemble = Ensemble([load_model(result.run_dir)[0] for result in members]).to(device)
    best_epochs = [result.best_epoch for result in members]
    epochs_run = sum(result.epochs_run for result in members)
    seconds = sum(result.train_seconds for result in members)
    result = FitResult(str(run_dir), float("nan"), best_epochs, epochs_run, seconds, [], model=ensemble)
    result.members = members
    if ranks.is_main:
        save_checkpoint(run_dir / "best.pt", {"config": to_dict(cfg), "model": ensemble.state_dict()})
        # predicted once, for the vote's figure (as a single run's: without the big-rock scale) and finish_run
        vote_val, result.best_val_miou = predict_validation(ensemble, cfg, prepared, device)
        from marsseg import report

        report.plot_member_curves([m.history for m in members], result.best_val_miou, run_dir / "curves.png")
        if score_test:
            result.val, result.test = finish_run(
                run_dir, cfg, prepared, device, best_epochs, epochs_run, seconds, vote_val
            )
    if ranks.world > 1:
        dist.barrier()  # every rank returns once rank 0 has written the vote's files
    return result


def _numbered(on_epoch, offset: int, epoch: int, val_miou: float) -> None:
    on_epoch(offset + epoch, val_miou)
