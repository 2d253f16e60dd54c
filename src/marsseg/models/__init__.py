"""The model zoo: one file per architecture, `MODELS` maps names to classes, `create_model` builds one, and
`build_network` / `build_model` build a run's network and its model (one network or a vote) from its config: the one
place a model is built.

Every model maps a (B, in_channels, H, W) float image to (B, num_classes, H, W) logits, for H and W
divisible by its `input_multiple` (8 to 64; 16 for the default `res_unet`): 64x128 crops in training, whole
camera frames padded up to a multiple in `predict.frame_probabilities`.
"""

import inspect

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from marsseg.data.io import NUM_CLASSES
from marsseg.models.danet import DANet
from marsseg.models.deeplab import DeepLabV3
from marsseg.models.dual_unet import DualUNet
from marsseg.models.ensemble import Ensemble, final_logits
from marsseg.models.unet import ResUNet, UNet

MODELS: dict[str, type[nn.Module]] = {
    "unet": UNet,
    "res_unet": ResUNet,
    "dual_unet": DualUNet,
    "deeplab": DeepLabV3,
    "danet": DANet,
}

__all__ = [
    "MODELS",
    "DANet",
    "DeepLabV3",
    "DualUNet",
    "Ensemble",
    "ResUNet",
    "UNet",
    "build_model",
    "build_network",
    "count_parameters",
    "create_model",
    "final_logits",
    "gflops_per_image",
]


def create_model(name: str, *, in_channels: int = 1, num_classes: int = 5, **kwargs) -> nn.Module:
    """Build the model called `name` (a key of `MODELS`) with the given constructor arguments.

    Raises:
        ValueError: for an unknown name, an argument the constructor does not take, or a bad value.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(sorted(MODELS))}")
    cls = MODELS[name]
    accepted = [p for p in inspect.signature(cls).parameters if p not in ("in_channels", "num_classes")]
    unexpected = sorted(set(kwargs) - set(accepted))
    if unexpected:
        raise ValueError(
            f"model {name!r} got unexpected argument(s) {', '.join(unexpected)}; "
            f"accepted: in_channels, num_classes, {', '.join(accepted)}"
        )
    return cls(in_channels=in_channels, num_classes=num_classes, **kwargs)


def build_network(cfg) -> nn.Module:
    """One network of a config's model section (cfg: a marsseg.config.Config): what trains, what last.pt holds."""
    return create_model(
        cfg.model.name,
        in_channels=cfg.data.in_channels,
        num_classes=NUM_CLASSES,
        width=cfg.model.width,
        **cfg.model.options,
    )


def build_model(cfg, *, weights: dict | None = None) -> nn.Module:
    """The shape of a run's model (best.pt): one network, or with optim.keep "best_and_last" the soft vote (Ensemble)
    of two, its best epoch on validation and its last; with model.members > 1, an Ensemble of that many such members,
    which train one at a time (engine.fit). Given best.pt's `weights`, a vote whose best epoch was its last holds
    that network once (checkpoints.save_best_and_last), and the shape follows."""

    def member(prefix: str) -> nn.Module:
        voted = weights is None or any(name.startswith(f"{prefix}members.1.") for name in weights)
        if cfg.optim.keep == "best_and_last" and voted:
            return Ensemble([build_network(cfg), build_network(cfg)])
        return build_network(cfg)

    if cfg.model.members == 1:
        return member("")
    return Ensemble([member(f"members.{k}.") for k in range(cfg.model.members)])


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def gflops_per_image(model: nn.Module, *, in_channels: int = 1, height: int = 64, width: int = 128) -> float:
    """GFLOP of one eval-mode forward pass on one image (a multiply-add counts as 2 FLOP).

    Counts matmuls and convolutions only (what FlopCounterMode counts), not norms, activations or resizes.
    """
    was_training = model.training
    param = next(model.parameters())
    x = torch.zeros(1, in_channels, height, width, device=param.device, dtype=param.dtype)
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() / 1e9
