"""A trained run as an ONNX model that runs outside marsseg, and running such a file with onnxruntime.

The graph's contract is `GRAPH_CONTRACT` (also stored in the file). The file's metadata carries the run's config
(frame size, flip TTA, ...) and the input multiple. Needs the `onnx` extra: pip install -e ".[onnx]".
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn

from marsseg.config import Config, from_dict, to_dict
from marsseg.data.dataset import scale_pixels
from marsseg.data.io import write_atomically
from marsseg.errors import UserError
from marsseg.models import final_logits
from marsseg.predict import scale_big_rock

GRAPH_CONTRACT = (
    "Input `pixels`: gray values 0..255 as float32 (N, 1, H, W), H and W divisible by the metadata's "
    "marsseg.input_multiple. Outputs `logits` (N, 5, H, W) and `probabilities` (N, 5, H, W): the softmax with the "
    "big-rock probability multiplied by the run's big-rock scale, so that 1 + argmax over channels 1..4 of "
    "`probabilities` is marsseg's label (1 soil, 2 bedrock, 3 sand, 4 big rock; AI4Mars value: label - 1). "
    "marsseg predict averages the probabilities over a horizontal flip when the config's tta is true, and with "
    "whole_frames true predicts two crops that are the halves of one frame as one (2H, W) image; with tta_scales "
    "other than [1.0] it also predicts each image resized by each factor (padded to the multiple, probabilities "
    "resized back) and averages. For an "
    "ensemble (config model.members > 1, or optim.keep best_and_last: the best epoch's network and the last's, "
    "unless they are one) "
    "`logits` are the log of the members' mean probabilities."
)
INPUT, OUTPUTS = "pixels", ("logits", "probabilities")
CONFIG_KEY, MULTIPLE_KEY = "marsseg.config", "marsseg.input_multiple"


class ExportedModel(nn.Module):
    """What the ONNX graph computes (`GRAPH_CONTRACT`): input scaling, the model, softmax, big-rock scale; in fp32."""

    def __init__(self, model: nn.Module, in_channels: int, big_rock_scale: float):
        super().__init__()
        self.model, self.in_channels, self.big_rock_scale = model, in_channels, big_rock_scale

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = scale_pixels(pixels).expand(-1, self.in_channels, -1, -1)  # (N, in_channels, H, W)
        logits = final_logits(self.model(x))  # (N, C, H, W)
        return logits, scale_big_rock(logits.softmax(dim=1), self.big_rock_scale)


def export_onnx(model: nn.Module, cfg: Config, path: str | os.PathLike) -> None:
    """Write `model` (a run's, with its config `cfg`) as an ONNX file with dynamic batch, height and width."""
    if importlib.util.find_spec("onnxscript") is None:  # torch's exporter writes the graph with onnxscript
        raise UserError(f"{path}: exporting needs onnx and onnxscript; pip install -e '.[onnx]'")
    wrapped = ExportedModel(model.eval().cpu(), cfg.data.in_channels, cfg.big_rock_scale or 1.0).eval()
    multiple = model.input_multiple
    example = torch.rand(2, 1, 4 * multiple, 8 * multiple) * 255
    dynamic = {0: torch.export.Dim.DYNAMIC, 2: torch.export.Dim.DYNAMIC, 3: torch.export.Dim.DYNAMIC}
    # The exporter warns about optional torchvision operators and deprecations that do not concern this graph.
    with warnings.catch_warnings(), _quiet_logger("torch.onnx"), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            wrapped,
            (example,),
            dynamo=True,
            verbose=False,
            dynamic_shapes=(dynamic,),
            input_names=[INPUT],
            output_names=list(OUTPUTS),
        )
    for value, dims in ((program.model.graph.inputs[0], 1), *((output, 5) for output in program.model.graph.outputs)):
        value.shape = type(value.shape)(["batch", dims, "height", "width"])  # names, not the exporter's s0, s1
    program.model.metadata_props[CONFIG_KEY] = yaml.safe_dump(to_dict(cfg), sort_keys=False)
    program.model.metadata_props[MULTIPLE_KEY] = str(multiple)
    program.model.doc_string = GRAPH_CONTRACT
    write_atomically(path, lambda temporary: program.save(temporary))


@contextlib.contextmanager
def _quiet_logger(name: str):
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


class OnnxModel:
    """An exported marsseg model run by onnxruntime, usable wherever `predict` takes a model: called on uint8
    images (B, H, W) it returns the graph's probabilities (B, C, H, W), big-rock scale applied."""

    def __init__(self, path: str | os.PathLike, *, threads: int = 0):
        """`threads`: onnxruntime's intra-op threads; 0 leaves its default (one per physical core)."""
        try:
            import onnxruntime
        except ImportError:
            raise UserError(f"{path}: running an .onnx file needs onnxruntime; pip install -e '.[onnx]'") from None
        if not Path(path).is_file():
            raise UserError(f"{path}: file not found, expected an .onnx file written by marsseg export")
        try:
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = threads
            available = onnxruntime.get_available_providers()
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
            self.session = onnxruntime.InferenceSession(str(path), options, providers=providers)
            metadata = self.session.get_modelmeta().custom_metadata_map
            self.input_multiple = int(metadata[MULTIPLE_KEY])
            config = yaml.safe_load(metadata[CONFIG_KEY])
        except Exception as error:  # onnxruntime raises its own types for a foreign or corrupt file
            raise UserError(f"{path}: not an ONNX model written by marsseg export ({type(error).__name__})") from None
        self.config = from_dict(config, source=f"{path} metadata")

    def outputs(self, images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, probabilities), each (B, C, H, W), for uint8 images (B, H, W)."""
        pixels = np.ascontiguousarray(images, dtype=np.float32)[:, None]  # (B, 1, H, W)
        logits, probabilities = self.session.run(list(OUTPUTS), {INPUT: pixels})
        return torch.from_numpy(logits), torch.from_numpy(probabilities)

    def __call__(self, images: np.ndarray) -> torch.Tensor:
        return self.outputs(images)[1]


def load_for_inference(path: str | os.PathLike) -> tuple[nn.Module | OnnxModel, Config]:
    """A run directory's model and config, or an exported .onnx file's.

    For an .onnx file the graph applies the big-rock scale itself, so the config returned says 1 there and
    `labels_from_probabilities` must not apply it again; and the graph computes in fp32, whatever the run trained in
    (a bf16 run's torch predictions can differ from it on a few pixels).
    """
    if str(path).endswith(".onnx"):
        model = OnnxModel(path)
        cfg = model.config
        cfg.big_rock_scale, cfg.precision, cfg.inference_precision = 1.0, "fp32", "fp32"
        return model, cfg
    from marsseg.checkpoints import load_model

    return load_model(path)
