"""The experiments table: every model trained with one recipe, budget and split, over seeds, plus an ensemble.

Each (model, seed) trains into its own run directory under OUT/runs; a run with metrics.json is finished and
skipped when the command is run again, and a run that has only last.pt (killed) is resumed.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from marsseg.checkpoints import can_resume, check_same_split, load_model, saved_config
from marsseg.config import Config, InferenceSettings, dotted_names, get_field, inference_settings, to_dict
from marsseg.data.io import write_atomically, write_text_atomically
from marsseg.data.prepare import PreparedData, prepare_data
from marsseg.engine import fit
from marsseg.errors import UserError
from marsseg.evaluation import CLASS_KEYS, evaluate_probabilities
from marsseg.finish import choose_big_rock_scale
from marsseg.models import Ensemble, count_parameters, gflops_per_image
from marsseg.precision import resolve_device
from marsseg.predict import predict_probabilities
from marsseg.training import configure_threads, with_resolved_precision

FIELDS = ["model", "seed", "params", "gflops", "train_minutes", "epochs", "val_miou", "test_miou"] + [
    f"test_{name}" for name in CLASS_KEYS
]


def run_one(cfg: Config, run_dir: Path, prepared: PreparedData) -> dict:
    """Train (or resume, or skip) one (model, seed) and return its row."""
    saved = saved_config(run_dir)  # a config written before a field existed holds that field's old meaning
    wanted = with_resolved_precision(cfg)
    for name in dotted_names(to_dict(wanted)) if saved is not None else []:
        theirs, mine = get_field(saved, name), get_field(wanted, name)
        if theirs != mine:
            raise UserError(
                f"{run_dir}: holds a run of another recipe or budget (field '{name}': the run has {theirs!r}, "
                f"this command {mine!r}); use a new --out for this one"
            )
    check_same_split(run_dir, prepared.split)
    if not (run_dir / "metrics.json").is_file():
        fit(cfg, run_dir, resume=can_resume(run_dir), force=True, prepared=prepared)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    model = load_model(run_dir)[0]  # the run's model as it predicts: params and GFLOP count every network it holds
    row = {
        "model": cfg.model.name if cfg.model.members == 1 else f"{cfg.model.name} x{cfg.model.members}",
        "seed": cfg.seed,
        "params": count_parameters(model),
        "gflops": round(gflops_per_image(model, in_channels=cfg.data.in_channels), 3),
        "train_minutes": round(metrics["train_seconds"] / 60, 2),
        "epochs": metrics["epochs_run"],
        "val_miou": round(metrics["val_miou"], 4),
        "test_miou": round(metrics.get("test_miou", float("nan")), 4),  # no test part: test_fraction 0
    }
    row.update({f"test_{k}": round(metrics.get("test_iou", {}).get(k, float("nan")), 4) for k in CLASS_KEYS})
    return row


def ensemble_scores(
    run_dirs: list[Path],
    prepared: PreparedData,
    settings: InferenceSettings,
    *,
    device: torch.device | str = "cpu",
    big_rock_scale: float = 0.0,
    checkpoints: list[str] | None = None,
) -> dict[str, tuple]:
    """The soft vote (models.Ensemble) of the best checkpoints of `run_dirs` (or `checkpoints`, "best", "last" or
    "epoch_N" for each), predicted as `settings` say: (mIoU, per-class IoU) on val and test.

    The big-rock scale is `big_rock_scale`, or with 0 the one best for the vote on validation, chosen as training
    chooses a run's (finish.choose_big_rock_scale); scores["scale"] holds it, scores["test_evaluation"] the test
    part's Evaluation. One run is scored alone, as its training scored it.
    """
    checkpoints = checkpoints or ["best"] * len(run_dirs)
    networks = [load_model(run_dir, which=which)[0] for run_dir, which in zip(run_dirs, checkpoints, strict=True)]
    model = (networks[0] if len(networks) == 1 else Ensemble(networks)).to(device)
    scores: dict = {}
    for part in ("val", "test"):
        indices = getattr(prepared.split, part)
        images, masks = prepared.data.images[indices], prepared.data.masks[indices]
        probabilities = list(predict_probabilities(model, images, settings=settings, device=device))
        if part == "val":
            scores["scale"] = choose_big_rock_scale(probabilities, masks, big_rock_scale)[0]
        result = evaluate_probabilities(probabilities, masks, big_rock_scale=scores["scale"])
        scores[part] = (result.miou, result.ious)
        scores[f"{part}_evaluation"] = result
    return scores


def summarize(rows: list[dict]) -> list[dict]:
    """Mean and standard deviation over seeds, one line per model (in the order first seen). Params and GFLOP are the
    largest over seeds: a run whose best epoch was its last holds one network where the others hold a vote of two."""
    summary = []
    for name in dict.fromkeys(r["model"] for r in rows):
        group = [r for r in rows if r["model"] == name]
        line = {
            "model": name,
            "seeds": len(group),
            **{k: max(float(r[k]) for r in group) for k in ("params", "gflops")},
        }
        for key in ["train_minutes", "val_miou", "test_miou"] + [f"test_{c}" for c in CLASS_KEYS]:
            values = np.array([float(r[key]) for r in group])
            line[key] = (values.mean(), values.std(ddof=1) if len(values) > 1 else 0.0)
        summary.append(line)
    return summary


def format_markdown(summary: list[dict], budget: str) -> str:
    def cell(pair, seeds: int, *, digits: int = 3) -> str:
        mean, std = pair
        return f"{mean:.{digits}f} ± {std:.{digits}f}" if seeds > 1 else f"{mean:.{digits}f}"  # no spread of one

    header = (
        "| model | params (M) | GFLOP/img | seeds | train min | val mIoU | local-test mIoU | soil | bedrock | sand "
        "| big rock |\n|---|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [f"Budget per run: {budget}. Mean ± std over seeds; IoU per class on the local test part.", "", header]
    for s in summary:
        n = s["seeds"]
        lines.append(
            f"| {s['model']} | {s['params'] / 1e6:.2f} | {s['gflops']:.2f} | {n} "
            f"| {cell(s['train_minutes'], n, digits=1)} | {cell(s['val_miou'], n)} | {cell(s['test_miou'], n)} | "
            + " | ".join(cell(s[f"test_{c}"], n) for c in CLASS_KEYS)
            + " |"
        )
    return "\n".join(lines) + "\n"


def plot_results(summary: list[dict], path: Path) -> None:
    from marsseg import report

    plt = report.plt
    names = [s["model"] for s in summary]
    x = np.arange(len(names))
    figure, axis = plt.subplots(figsize=(1.6 * len(names) + 3, 3.8))
    for offset, key, label in ((-0.2, "val_miou", "validation"), (0.2, "test_miou", "local test")):
        means = [s[key][0] for s in summary]
        errors = [s[key][1] for s in summary]
        axis.bar(x + offset, means, 0.4, yerr=errors, capsize=3, label=label)
    big_rock = [s["test_big_rock"][0] for s in summary]
    axis.plot(x, big_rock, "o", color=report.LABEL_COLORS.colors[4], label="big rock IoU (test)")
    axis.set_xticks(x, names)
    axis.set(ylabel="mIoU (classes 1-4)", ylim=(0, 1), title="models at an equal budget")
    axis.legend(fontsize=8)
    report.save_figure(figure, path)


def config_for(base: Config, model: str, seed: int) -> Config:
    """The base recipe for one row: `model` at the base's width, seed offset by `seed`. The base's model options
    (e.g. {"levels": 5}) belong to the base's model, so another model starts without them."""
    options = base.model.options if model == base.model.name else {}
    return replace(base, seed=base.seed + seed, model=replace(base.model, name=model, options=options))


def run_experiments(
    base: Config, out_dir: str | os.PathLike, models: list[str], seeds: int, *, ensemble: bool = True
) -> list[dict]:
    """Train every model for every seed on one split; write results.csv, results.md and results.png."""
    out_dir = Path(out_dir)
    configure_threads(base.threads)
    prepared = prepare_data(base.data)
    rows, run_dirs = [], []
    for name in models:
        for seed in range(seeds):
            cfg = config_for(base, name, seed)
            run_dirs.append(out_dir / "runs" / f"{name}_seed{cfg.seed}")
            rows.append(run_one(cfg, run_dirs[-1], prepared))
            write_table(rows, out_dir, base)
    if ensemble and len(rows) > 1:
        device = resolve_device(base.device)
        scores = ensemble_scores(
            run_dirs, prepared, inference_settings(base), device=device, big_rock_scale=base.big_rock_scale
        )
        row = {
            "model": f"ensemble of {len(rows)}",
            "seed": "-",
            "params": sum(r["params"] for r in rows),
            "gflops": round(sum(r["gflops"] for r in rows), 3),
            "train_minutes": round(sum(r["train_minutes"] for r in rows), 2),
            "epochs": "-",
            "val_miou": round(scores["val"][0], 4),
            "test_miou": round(scores["test"][0], 4),
        }
        row.update({f"test_{c}": round(float(v), 4) for c, v in zip(CLASS_KEYS, scores["test"][1], strict=True)})
        rows.append(row)
        write_table(rows, out_dir, base)
    return rows


def budget_text(cfg: Config) -> str:
    text = f"{cfg.optim.epochs} epochs"
    return text + (f", at most {cfg.optim.minutes:g} minutes" if cfg.optim.minutes else "")


def write_table(rows: list[dict], out_dir: Path, cfg: Config) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)

    def write_csv(temporary: str) -> None:
        with open(temporary, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=FIELDS)
            writer.writeheader()
            writer.writerows(rows)

    write_atomically(out_dir / "results.csv", write_csv)
    summary = summarize(rows)
    text = format_markdown(summary, budget_text(cfg))
    write_text_atomically(out_dir / "results.md", text)
    plot_results(summary, out_dir / "results.png")
