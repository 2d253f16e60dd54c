"""Teachers: finished runs (semi.teachers) that label the unlabeled pool of semi-supervised training once, before
it starts (semi.py draws the batches). A teacher must not have trained on the run's held-out crops."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from marsseg.checkpoints import load_model
from marsseg.config import Config, inference_settings
from marsseg.data.prepare import PreparedData, recorded_fingerprint
from marsseg.data.split import RARE_CLASS, Split
from marsseg.errors import UserError
from marsseg.losses import FIRST_SCORED_CLASS, IGNORED
from marsseg.predict import predict_probabilities, scale_big_rock
from marsseg.semi import UnlabeledStream, confident_labels, unlabeled_images

PREDICT_BATCH = 128  # crops per forward pass when teachers label the pool


def check_teachers(teachers: list[str], prepared: PreparedData) -> None:
    """Refuse a teacher that trained on this run's validation or local-test crops (same data, another split): its
    labels of their images would leak into early stopping and the final figure. A teacher trained on other data
    cannot be checked, and is said so."""
    held_out = np.union1d(prepared.split.val, prepared.split.test)
    for run_dir in teachers:
        if recorded_fingerprint(run_dir) != prepared.fingerprint:
            print(f"teacher {run_dir} trained on other data: its crops are not checked against this run's split")
            continue
        split_path = Path(run_dir) / "split.json"
        if not split_path.is_file():
            raise UserError(f"{split_path}: missing; is {run_dir} a marsseg run directory?")
        seen = np.intersect1d(Split.load(split_path).train, held_out)
        if len(seen):
            raise UserError(
                f"teacher {run_dir} trained on {len(seen)} of this run's validation and local-test crops; "
                "use a teacher with this run's split (data.split_seed, data.val_fraction, data.test_fraction; "
                "a run trained before 2026-11-29 grouped frames otherwise and has another split)"
            )


def label_pool(
    teachers: list[str],
    images: np.ndarray,
    threshold: float,
    rare_threshold: float,
    device,
    *,
    progress: bool = True,
    soft: bool = False,
) -> torch.Tensor:
    """(M, H, W) int8: the pool `images` (M, H, W) labelled once by the best checkpoints of the runs `teachers`;
    with `soft`, (M, 4, H, W) float16: their averaged probabilities themselves (soft targets, no threshold).

    Each teacher's probabilities (its own flip TTA and big-rock scale, as its predictions have them), renormalised
    over classes 1..4 (background is never a label), are averaged over teachers; then confident_labels. Soft targets
    leave out the big-rock scales, which were chosen for an argmax, not as probabilities: the student learns the
    teachers' own shares and chooses its own scale. Loading the teachers leaves the global random state as it was,
    so the student starts as it would without them."""
    with torch.random.fork_rng(devices=[]):
        models = [load_model(run_dir) for run_dir in teachers]
    streams = [
        predict_probabilities(
            model.to(device),
            images,
            settings=inference_settings(cfg, precision=cfg.precision),
            batch_size=PREDICT_BATCH,
            device=device,
        )
        for model, cfg in models
    ]
    scales = [1.0 if soft else (cfg.big_rock_scale or 1.0) for _, cfg in models]
    labels = []
    batches = zip(*streams, strict=True)
    total = -(-len(images) // PREDICT_BATCH)
    for batch in tqdm(batches, total=total, desc="pseudo-label", disable=not progress, leave=False):
        scored = [
            scale_big_rock(probs, scale)[:, FIRST_SCORED_CLASS:] for probs, scale in zip(batch, scales, strict=True)
        ]
        averaged = torch.stack([p / p.sum(dim=1, keepdim=True).clamp(min=1e-12) for p in scored]).mean(dim=0)
        if soft:
            labels.append(averaged.to(torch.float16))
        else:
            labels.append(confident_labels(averaged, threshold, rare_threshold).to(torch.int8))
    return torch.cat(labels)


def build_unlabeled_stream(
    cfg: Config, prepared: PreparedData, device, *, processes: int = 1, progress: bool = True
) -> UnlabeledStream | None:
    """The stream of unlabeled batches for one of `processes` training processes, or None when semi-supervised
    training is off (semi.weight 0). With semi.teachers, the pool is labelled here, once."""
    if cfg.semi.weight <= 0:
        return None
    images = unlabeled_images(cfg, prepared)
    labels = None
    if cfg.semi.teachers:
        semi = cfg.semi
        check_teachers(semi.teachers, prepared)
        soft = semi.loss == "soft"
        labels = label_pool(
            semi.teachers, images, semi.threshold, semi.rare_threshold, device, progress=progress, soft=soft
        )
        if progress:
            teachers = f"{len(images)} unlabeled crops by {len(semi.teachers)} teacher(s)"
            print(f"pseudo-labels: {teachers}; {_pool_words(labels)}", flush=True)
    return UnlabeledStream(cfg, images, device, processes=processes, labels=labels)


def _pool_words(labels: torch.Tensor) -> str:
    """What the teachers said of the pool: the share of pixels kept and of big rock among them; for soft targets,
    big rock's share of the probability and of the pixels where it is the most likely class."""
    if labels.is_floating_point():  # (M, 4, H, W) soft targets
        rock = labels[:, RARE_CLASS - FIRST_SCORED_CLASS]
        share, likeliest = rock.float().mean(), (rock >= labels.amax(dim=1)).float().mean()
        return f"soft targets; big rock {share:.1%} of the probability, the likeliest on {likeliest:.1%} of pixels"
    kept = labels != IGNORED
    rock = (labels == RARE_CLASS).sum() / max(int(kept.sum()), 1)
    return f"{kept.float().mean():.1%} of pixels kept, {rock:.1%} of them big rock"
