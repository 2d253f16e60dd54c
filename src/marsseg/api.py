"""The Python API: `marsseg.load()` returns a model that labels uint8 gray images of any size, as `marsseg predict`
does; `marsseg.train()` trains a run as `marsseg train` does and returns its figures."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from marsseg.config import Config, InferenceSettings, inference_settings, load_config
from marsseg.data.io import HEIGHT, WIDTH
from marsseg.errors import UserError
from marsseg.predict import image_probabilities, labels_from_probabilities, predict_probabilities

Images = np.ndarray  # uint8 (H, W) or (N, H, W)


class SegmentationModel:
    """A loaded model (a run's, a model file's, an exported .onnx graph's or the shipped one) with the settings
    `marsseg predict` uses: the run's flip TTA and scales, halves of a frame predicted together, its big-rock scale,
    fp32. Images of the course's crop size (64x128) are predicted as the CSV predicts them; any other size as
    `predict --images` predicts a frame (resized by the model's frame size / its longer side, labels at full size).
    """

    def __init__(self, model, config: Config, source: str, device: torch.device):
        self.model, self.config, self.source, self.device = model, config, source, device

    def __repr__(self) -> str:
        return f"SegmentationModel({self.source!r}, model {self.config.model.name}, frame size {self.frame_size})"

    @property
    def frame_size(self) -> int:
        return self.config.data.frame_size

    def predict_proba(
        self,
        images: Images,
        *,
        tta: bool | None = None,
        scales: tuple[float, ...] | None = None,
        whole_frames: bool | None = None,
        precision: str | None = None,
    ) -> np.ndarray:
        """Softmax probabilities float32, (5, H, W) for an image (H, W) or (N, 5, H, W) for images (N, H, W): the
        model's, averaged over its test-time augmentation (an .onnx graph's include its big-rock scale). Keywords
        left at None keep the run's settings."""
        probs, single = self._probabilities(images, tta, scales, whole_frames, precision)
        probs = probs.numpy().astype(np.float32)
        return probs[0] if single else probs

    def predict(
        self,
        images: Images,
        *,
        tta: bool | None = None,
        scales: tuple[float, ...] | None = None,
        whole_frames: bool | None = None,
        precision: str | None = None,
        big_rock_scale: float | None = None,
    ) -> np.ndarray:
        """uint8 labels 1..4 (1 soil, 2 bedrock, 3 sand, 4 big rock), (H, W) or (N, H, W) like `images`: the argmax of
        predict_proba over classes 1..4 after the big-rock probability is multiplied by `big_rock_scale` (None: the
        run's, chosen on its validation part)."""
        probs, single = self._probabilities(images, tta, scales, whole_frames, precision)
        scale = (self.config.big_rock_scale or 1.0) if big_rock_scale is None else big_rock_scale
        labels = labels_from_probabilities(probs, big_rock_scale=scale).numpy().astype(np.uint8)
        return labels[0] if single else labels

    def _probabilities(self, images, tta, scales, whole_frames, precision) -> tuple[torch.Tensor, bool]:
        """(N, 5, H, W) probabilities of `images` as a batch, and whether they were one image (H, W)."""
        batch, single = self._as_batch(images)
        settings = self._settings(tta, scales, whole_frames, precision)
        if batch.shape[1:] == (HEIGHT, WIDTH):
            return torch.cat(
                list(predict_probabilities(self.model, batch, settings=settings, device=self.device))
            ), single
        frames = [
            image_probabilities(self.model, image, self.frame_size, settings=settings, device=self.device)
            for image in batch
        ]
        return torch.stack(frames), single

    def _settings(self, tta, scales, whole_frames, precision) -> InferenceSettings:
        """The run's inference settings with the keywords given (not None) in their place."""
        given = {"tta": tta, "scales": scales, "whole_frames": whole_frames, "precision": precision}
        settings = inference_settings(self.config).replace(**{k: v for k, v in given.items() if v is not None})
        if scales is not None:
            settings = settings.replace(scales=tuple(scales))
        if settings.precision != "fp32" and not isinstance(self.model, nn.Module):
            raise ValueError(f"precision {settings.precision!r}: an .onnx graph computes in fp32")
        return settings

    @staticmethod
    def _as_batch(images: Images) -> tuple[np.ndarray, bool]:
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim not in (2, 3) or 0 in images.shape:
            raise ValueError(
                f"images: found dtype {images.dtype} shape {images.shape}, expected uint8 gray (H, W) or (N, H, W)"
            )
        return (images[None], True) if images.ndim == 2 else (images, False)


def load(path: str | os.PathLike | None = None, *, device: str = "auto") -> SegmentationModel:
    """The model of a run directory, a model file (.pt) or an exported .onnx file; with no path, the model marsseg
    ships (docs/model-card.md).

    Raises:
        UserError: a path that is not one of those, or a model file that holds more than tensors and plain values.
    """
    from marsseg.checkpoints import shipped_model
    from marsseg.export import load_for_inference
    from marsseg.precision import resolve_device

    source = shipped_model() if path is None else Path(path)
    model, cfg = load_for_inference(source)
    target = resolve_device(device)
    if isinstance(model, nn.Module):
        model = model.to(target)
    return SegmentationModel(model, cfg, str(source), target)


def train(*, data: str | os.PathLike = "", out: str | os.PathLike, config: str | None = None, **overrides) -> dict:
    """Train a run as `marsseg train --data DATA --out OUT` does and return its metrics.json. `overrides` set config
    fields by their dotted names (`**{"optim.epochs": 3}`) or with "__" for the dot (`optim__epochs=3`); `data` ""
    is the embedded synthetic data set. A run directory that exists is refused, as on the command line."""
    from marsseg.engine import fit

    values = {"data.path": str(data), **{name.replace("__", "."): value for name, value in overrides.items()}}
    cfg = load_config(config, overrides=values)
    fit(cfg, out)
    return json.loads((Path(out) / "metrics.json").read_text())


__all__ = ["SegmentationModel", "load", "train", "UserError"]
