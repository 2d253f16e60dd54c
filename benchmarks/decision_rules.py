"""How softmax probabilities become labels: argmax, a big-rock scale chosen on validation, or abstaining (label 0).

For trained runs, the validation part is cut into random halves; each rule is fitted on one half and scored on the
other (40 fits per run), so a rule's gain is measured on images it was not fitted on. The local test part is never
read. Rules:

- argmax: the label is the most probable of classes 1..4 (what `predict` does with big_rock_scale 1);
- scale, best mIoU: the big-rock probability is multiplied by the scale of evaluation.BIG_ROCK_SCALES with the best
  mIoU on the fitting half (what training does with big_rock_scale 0, the default);
- scale, count match: the scale whose predicted big-rock pixel count is closest to the true count;
- IoU-aware, may predict 0: per pixel, the class k that maximizes the expected change of the mean IoU,
  (q_k (1 + IoU_k) - IoU_k) / U_k, with IoU_k and the union U_k estimated on the fitting half; label 0 (scored as
  no prediction: it removes a false positive and never adds a true positive) where every class's change is negative.

Run: .venv/bin/python benchmarks/decision_rules.py RUN_DIR [RUN_DIR ...] [--tta on|off]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from marsseg.checkpoints import load_model
from marsseg.config import inference_settings
from marsseg.data.prepare import prepare_data
from marsseg.data.split import Split
from marsseg.evaluation import BIG_ROCK_SCALES
from marsseg.metrics import confusion_matrix, intersections_and_unions, iou_per_class
from marsseg.predict import BIG_ROCK, labels_from_probabilities, predict_probabilities


def scores(masks: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    return iou_per_class(confusion_matrix(masks, labels))


def iou_and_union(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """IoU and union of classes 1..4, a class with an empty union counted as IoU 0 over a union of 1 (the rule
    needs finite numbers)."""
    true_positives, unions = intersections_and_unions(matrix)
    unions = np.maximum(unions, 1)
    return true_positives / unions, unions


def iou_aware_labels(probs: torch.Tensor, iou: np.ndarray, union: np.ndarray) -> torch.Tensor:
    q = probs[:, 1:]  # (N, 4, H, W)
    a = torch.tensor((1 + iou) / union, dtype=q.dtype)[None, :, None, None]
    b = torch.tensor(iou / union, dtype=q.dtype)[None, :, None, None]
    gain = q * a - b
    best, labels = gain.max(dim=1)
    return torch.where(best > 0, labels + 1, torch.zeros_like(labels))


def fit_rules(probs: torch.Tensor, masks: torch.Tensor) -> dict:
    """Each rule, fitted on (probs, masks), as a function of probabilities."""
    by_miou = {
        s: np.nanmean(scores(masks, labels_from_probabilities(probs, big_rock_scale=s))) for s in BIG_ROCK_SCALES
    }
    true_count = int((masks == BIG_ROCK).sum())

    def count_error(scale: float) -> int:
        labels = labels_from_probabilities(probs, big_rock_scale=scale)
        return abs(int(((labels == BIG_ROCK) & (masks > 0)).sum()) - true_count)

    best_scale, count_scale = max(by_miou, key=by_miou.get), min(BIG_ROCK_SCALES, key=count_error)
    iou, union = iou_and_union(confusion_matrix(masks, labels_from_probabilities(probs)))
    for _ in range(3):  # to a fixed point: the estimates of the rule's own IoU and union
        iou, union = iou_and_union(confusion_matrix(masks, iou_aware_labels(probs, iou, union)))
    return {
        "argmax": labels_from_probabilities,
        "scale, best mIoU": lambda p: labels_from_probabilities(p, big_rock_scale=best_scale),
        "scale, count match": lambda p: labels_from_probabilities(p, big_rock_scale=count_scale),
        "IoU-aware, may predict 0": lambda p: iou_aware_labels(p, iou, union),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run directories of `marsseg train`")
    parser.add_argument("--halvings", type=int, default=20)
    parser.add_argument("--tta", choices=("run", "on", "off"), default="run", help="flip TTA: as the run says, or not")
    args = parser.parse_args()
    print(f"{'run':<46}{'rule':<26}{'mIoU':>8}{'big rock':>10}{'gain':>9}{'wins':>7}")
    for run in args.runs:
        model, cfg = load_model(run)
        prepared = prepare_data(cfg.data, split=Split.load(f"{run}/split.json"))
        val = prepared.split.val
        images = prepared.data.images[val]
        tta = cfg.tta if args.tta == "run" else args.tta == "on"
        probs = torch.cat(list(predict_probabilities(model, images, settings=inference_settings(cfg).replace(tta=tta))))
        masks = torch.from_numpy(prepared.data.masks[val]).long()
        rng = np.random.default_rng(0)
        results: dict[str, list] = {}
        for _ in range(args.halvings):
            first = np.zeros(len(val), dtype=bool)
            first[rng.permutation(len(val))[: len(val) // 2]] = True
            for fit_half, score_half in ((first, ~first), (~first, first)):
                rules = fit_rules(probs[fit_half], masks[fit_half])
                for name, rule in rules.items():
                    ious = scores(masks[score_half], rule(probs[score_half]))
                    results.setdefault(name, []).append((np.nanmean(ious), ious[3]))
        baseline = np.array(results["argmax"])[:, 0]
        for name, values in results.items():
            values = np.array(values)
            gain = values[:, 0] - baseline
            print(
                f"{run[-45:]:<46}{name:<26}{values[:, 0].mean():>8.4f}{np.nanmean(values[:, 1]):>10.4f}"
                f"{gain.mean():>+9.4f}{np.mean(gain > 0):>7.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
