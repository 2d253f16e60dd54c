"""Plots and tables a person looks at: training curves, confusion matrix, worst predictions, removed samples."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")  # files only; no display is needed or assumed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap, to_rgb  # noqa: E402

from marsseg.data.io import CLASS_NAMES, write_atomically  # noqa: E402

# background black, soil brown, bedrock gray-blue, sand yellow, big rock red
LABEL_COLORS = ListedColormap(["#000000", "#a0522d", "#6a7fa8", "#e8c547", "#e0242b"])


def overlay_labels(image: np.ndarray, labels: np.ndarray, *, opacity: float = 0.45) -> np.ndarray:
    """(H, W, 3) uint8 RGB: the gray image tinted with each pixel's class colour (background left untinted)."""
    colours = np.array([to_rgb(c) for c in LABEL_COLORS.colors]) * 255  # (5, 3)
    gray = np.repeat(image[..., None].astype(np.float32), 3, axis=-1)  # (H, W, 3)
    tinted = (1 - opacity) * gray + opacity * colours[labels]
    return np.where(labels[..., None] > 0, tinted, gray).round().astype(np.uint8)


LEGEND_ROW = 16  # pixels: the height of one row of the legend under an overlay


def legend_strip(width: int) -> np.ndarray:
    """(H, width, 3) uint8 RGB: a swatch and the name of each labeled class, in rows as wide as `width`."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    entries = []  # (swatch colour, name, width of the entry in pixels)
    for colour, name in zip(LABEL_COLORS.colors[1:], CLASS_NAMES[1:], strict=True):
        text_width = int(np.ceil(font.getlength(name)))
        entries.append((colour, name, LEGEND_ROW + text_width + 10))
    rows, x = 1, 0
    for *_, entry_width in entries:
        if x and x + entry_width > width:
            rows, x = rows + 1, 0
        x += entry_width
    strip = Image.new("RGB", (width, rows * LEGEND_ROW), "white")
    draw = ImageDraw.Draw(strip)
    row, x = 0, 0
    for colour, name, entry_width in entries:
        if x and x + entry_width > width:
            row, x = row + 1, 0
        top = row * LEGEND_ROW
        rgb = tuple(int(round(255 * c)) for c in to_rgb(colour))
        draw.rectangle([x + 2, top + 3, x + LEGEND_ROW - 3, top + LEGEND_ROW - 4], fill=rgb)
        draw.text((x + LEGEND_ROW, top + 2), name, fill="black", font=font)
        x += entry_width
    return np.asarray(strip)


def overlay_with_legend(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """overlay_labels' picture with a legend of the class colours under it: (H + legend, W, 3) uint8 RGB."""
    overlay = overlay_labels(image, labels)
    return np.concatenate([overlay, legend_strip(overlay.shape[1])])


def save_figure(figure, path: str | os.PathLike) -> None:
    figure.tight_layout()
    write_atomically(path, lambda temporary: figure.savefig(temporary, dpi=100, format="png"))
    plt.close(figure)


def format_iou_table(ious: np.ndarray, miou: float, *, title: str = "") -> str:
    """A plain-text table of per-class IoU and the mean."""
    lines = [title] if title else []
    lines.append(f"{'class':<10} {'IoU':>7}")
    for name, iou in zip(CLASS_NAMES[1:], ious, strict=True):
        lines.append(f"{name:<10} {iou:7.4f}")
    lines.append(f"{'mIoU':<10} {miou:7.4f}")
    return "\n".join(lines)


def plot_curves(history: list[dict], path: str | os.PathLike) -> None:
    """Training loss, validation mIoU and per-class validation IoU by epoch."""
    if not history:
        return
    epochs = [h["epoch"] for h in history]
    figure, (left, middle, right) = plt.subplots(1, 3, figsize=(14, 3.6))
    left.plot(epochs, [h["train_loss"] for h in history])
    left.set(title="training loss", xlabel="epoch")
    middle.plot(epochs, [h["val_miou"] for h in history], color="k")
    middle.set(title="validation mIoU (classes 1-4)", xlabel="epoch", ylim=(0, 1))
    for key, name, color in zip(
        ("iou_soil", "iou_bedrock", "iou_sand", "iou_big_rock"), CLASS_NAMES[1:], LABEL_COLORS.colors[1:], strict=True
    ):
        right.plot(epochs, [h[key] for h in history], label=name, color=color)
    right.set(title="validation IoU per class", xlabel="epoch", ylim=(0, 1))
    right.legend(fontsize=8)
    save_figure(figure, path)


def plot_member_curves(histories: list[list[dict]], vote_miou: float, path: str | os.PathLike) -> None:
    """An ensemble run's members (engine.fit): each one's training loss, validation mIoU and big-rock IoU by epoch,
    and the soft vote's validation mIoU."""
    figure, (left, middle, right) = plt.subplots(1, 3, figsize=(14, 3.6))
    for k, history in enumerate(histories):
        epochs = [h["epoch"] for h in history]
        left.plot(epochs, [h["train_loss"] for h in history], label=f"member_{k}")
        middle.plot(epochs, [h["val_miou"] for h in history], label=f"member_{k}")
        right.plot(epochs, [h["iou_big_rock"] for h in history], label=f"member_{k}")
    middle.axhline(vote_miou, color="k", linestyle="--", label="soft vote (kept epochs)")
    left.set(title="training loss", xlabel="epoch")
    middle.set(title="validation mIoU (classes 1-4)", xlabel="epoch", ylim=(0, 1))
    right.set(title="validation IoU of big rock", xlabel="epoch", ylim=(0, 1))
    for axis in (left, middle, right):
        axis.legend(fontsize=8)
    save_figure(figure, path)


def plot_confusion(matrix: np.ndarray, path: str | os.PathLike, *, title: str = "") -> None:
    """Row-normalised confusion matrix over true classes 1..4 (true background is never scored)."""
    rows = np.asarray(matrix, dtype=np.float64)[1:]
    shares = rows / np.maximum(rows.sum(axis=1, keepdims=True), 1)
    figure, axis = plt.subplots(figsize=(5.5, 4.5))
    image = axis.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    axis.set_xticks(range(5), CLASS_NAMES, rotation=30)
    axis.set_yticks(range(4), CLASS_NAMES[1:])
    axis.set(xlabel="predicted", ylabel="true", title=f"confusion (row shares) {title}")
    for (i, j), share in np.ndenumerate(shares):
        axis.text(j, i, f"{share:.2f}", ha="center", va="center", color="white" if share > 0.5 else "black")
    figure.colorbar(image)
    save_figure(figure, path)


def plot_predictions(
    images: np.ndarray,
    masks: np.ndarray,
    predictions: np.ndarray,
    scores: np.ndarray,
    path: str | os.PathLike,
    *,
    limit: int = 12,
) -> None:
    """Rows of image | true mask | prediction, worst image mIoU first."""
    order = np.argsort(np.nan_to_num(scores, nan=1.0))[:limit]
    figure, axes = plt.subplots(len(order), 3, figsize=(9, 1.6 * len(order)), squeeze=False)
    for row, index in enumerate(order):
        axes[row, 0].imshow(images[index], cmap="gray", vmin=0, vmax=255)
        axes[row, 0].set_ylabel(f"#{index}\nmIoU {scores[index]:.2f}", fontsize=8)
        axes[row, 1].imshow(masks[index], cmap=LABEL_COLORS, vmin=0, vmax=4, interpolation="nearest")
        axes[row, 2].imshow(images[index], cmap="gray", vmin=0, vmax=255)
        axes[row, 2].imshow(predictions[index], cmap=LABEL_COLORS, vmin=0, vmax=4, alpha=0.45, interpolation="nearest")
        for axis in axes[row]:
            axis.set_xticks([])
            axis.set_yticks([])
    axes[0, 0].set_title("image")
    axes[0, 1].set_title("true (black = unlabeled)")
    axes[0, 2].set_title("prediction overlaid")
    save_figure(figure, path)


def plot_samples(
    images: np.ndarray,
    masks: np.ndarray,
    indices: np.ndarray,
    path: str | os.PathLike,
    *,
    captions: list[str] | None = None,
    limit: int = 24,
) -> None:
    """A grid of image/mask pairs, e.g. the samples the cleaner removed, so a person can check them."""
    indices = np.asarray(indices)[:limit]
    columns = 4
    rows = max(1, int(np.ceil(len(indices) / columns)))
    figure, axes = plt.subplots(rows, 2 * columns, figsize=(2.2 * 2 * columns, 1.3 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for k, index in enumerate(indices):
        row, column = divmod(k, columns)
        axes[row, 2 * column].imshow(images[index], cmap="gray", vmin=0, vmax=255)
        axes[row, 2 * column].set_title(captions[k] if captions else f"#{index}", fontsize=7)
        axes[row, 2 * column + 1].imshow(masks[index], cmap=LABEL_COLORS, vmin=0, vmax=4, interpolation="nearest")
    save_figure(figure, path)
