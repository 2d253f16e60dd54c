"""Finishing a run: the big-rock scale of its kept model (best.pt) chosen on validation and stored there, its validation
score and, once, its local-test score with a bootstrap interval; metrics.json and confusion.png."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from marsseg.checkpoints import load_checkpoint, load_model, save_checkpoint
from marsseg.config import Config, inference_settings
from marsseg.data.io import write_text_atomically
from marsseg.data.prepare import PreparedData
from marsseg.evaluation import (
    CLASS_KEYS,
    Evaluation,
    best_big_rock_scale,
    evaluate,
    evaluate_probabilities,
    figures_by_source,
    miou_interval,
)
from marsseg.predict import predict_probabilities


def finish_run(
    run_dir: Path,
    cfg: Config,
    prepared: PreparedData,
    device: torch.device,
    best_epoch: int | list[int],
    epochs_run: int,
    train_seconds: float,
    *,
    val_probabilities: list[torch.Tensor] | None = None,
) -> tuple[Evaluation, Evaluation | None]:
    """Choose the big-rock scale on validation if asked, then score best.pt (the kept model) on validation and, once,
    on the local test part; write metrics.json. Returns (validation, local test or None when that part is empty).
    An ensemble run (engine.fit) passes each member's best epoch and the epochs of all its members.
    `val_probabilities`: best.pt's on the validation part (predict_validation), when the caller has them already."""
    from marsseg import report

    model = load_model(run_dir)[0].to(device)
    data, split = prepared.data, prepared.split
    metrics = {
        "best_epoch": best_epoch,
        "epochs_run": epochs_run,
        "train_seconds": round(train_seconds, 1),
        "tta": cfg.tta,
        "whole_frames": cfg.whole_frames,
        "tta_scales": list(cfg.tta_scales),
        "precision": cfg.precision,
        "inference_precision": cfg.inference_precision,
    }
    val_masks = data.masks[split.val]
    if val_probabilities is None:  # predicted once: for the scale, then scored with it
        val_probabilities = predict_validation(model, cfg, prepared, device)[0]
    scale, scores = choose_big_rock_scale(val_probabilities, val_masks, cfg.big_rock_scale)
    if scores is not None:
        metrics["big_rock_scale_val_miou"] = {str(k): round(v, 5) for k, v in scores.items()}
        _store_big_rock_scale(run_dir / "best.pt", scale)
    metrics["big_rock_scale"] = scale
    val = evaluate_probabilities(val_probabilities, val_masks, big_rock_scale=scale)
    metrics.update(val_miou=val.miou, val_iou=dict(zip(CLASS_KEYS, val.ious.tolist(), strict=True)))
    test = None
    if len(split.test):
        test_images, test_masks = data.images[split.test], data.masks[split.test]
        test = evaluate(
            model, test_images, test_masks, settings=inference_settings(cfg), device=device, big_rock_scale=scale
        )
        low, high, groups = miou_interval(test, data.subset(split.test))
        metrics.update(
            test_miou=test.miou,
            test_iou=dict(zip(CLASS_KEYS, test.ious.tolist(), strict=True)),
            test_miou_interval90=[low, high],  # unrounded: `train` prints it as `evaluate` prints its own
            test_groups=groups,
        )
        by_source = figures_by_source(test, data.subset(split.test))
        if by_source:  # merged data: each source's own figure
            metrics["test_by_source"] = by_source
        report.plot_confusion(test.matrix, run_dir / "confusion.png", title="local test part")
    write_text_atomically(run_dir / "metrics.json", json.dumps(metrics, indent=1))
    return val, test


def choose_big_rock_scale(
    val_probabilities: list[torch.Tensor], val_masks: np.ndarray, configured: float
) -> tuple[float, dict[float, float] | None]:
    """(scale, every scale's validation mIoU): the `configured` big-rock scale, or with 0 the best on the validation
    part's probabilities (evaluation.BIG_ROCK_SCALES; the scores are None when none was chosen)."""
    if configured:
        return configured, None
    return best_big_rock_scale(torch.cat(val_probabilities), val_masks)


def predict_validation(
    model: torch.nn.Module, cfg: Config, prepared: PreparedData, device: torch.device
) -> tuple[list[torch.Tensor], float]:
    """`model`'s probabilities on the validation part, in batches, predicted as the run predicts, and their mIoU at
    big-rock scale 1 (an epoch's figure, which `marsseg train` prints and tune maximises)."""
    images, masks = prepared.data.images[prepared.split.val], prepared.data.masks[prepared.split.val]
    probabilities = list(
        predict_probabilities(model.to(device), images, settings=inference_settings(cfg), device=device)
    )
    return probabilities, evaluate_probabilities(probabilities, masks).miou


def _store_big_rock_scale(path: Path, scale: float) -> None:
    """Into the checkpoint's config, where predict and evaluate read it."""
    state = load_checkpoint(path)
    state["config"]["big_rock_scale"] = scale
    save_checkpoint(path, state)
