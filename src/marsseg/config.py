"""Run configuration: nested dataclasses. Defaults < YAML file (--config) < command-line flags.

The resolved config is saved as `config.yaml` in every run directory and inside every checkpoint, so a run
can be rebuilt from its directory alone.
"""

from __future__ import annotations

import dataclasses
import math
import os
import typing
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import yaml

from marsseg.errors import UserError


class ConfigError(UserError):
    """A config file or flag with an unknown key, a wrong type or a value out of range."""


@dataclass
class DataConfig:
    path: str = ""  # the .npz to train on; empty means the embedded synthetic data
    split_seed: int = 0  # the split's own seed, so runs with other training seeds share one split
    val_fraction: float = 0.1  # validation part: the big-rock scale, early stopping if asked, every choice of recipe
    test_fraction: float = 0.1  # local test part: the final figure only
    oversample_factor: int = 4  # big-rock images appear this many times per epoch (training part only)
    # A curriculum that starts balanced: half of the first epoch's draws are big-rock images, falling linearly to the
    # oversample_factor share, which holds after this many epochs (sampling.curriculum_indices); 0 switches it off.
    # "repeat" sampler only.
    curriculum_epochs: int = 0
    sampler: str = "repeat"  # "repeat" (oversample by repetition) or "weighted" (WeightedRandomSampler)
    in_channels: int = 1  # 3 replicates the gray channel
    # The side a whole camera frame is resized to before it is cut into 64x128 crops (mars64 and `marsseg data
    # import`: 256 -> 128, the full AI4Mars release 1024 -> 128); `predict --images` resizes each image by
    # frame_size / its longer side, so the model sees the scale it was trained at.
    frame_size: int = 128
    num_workers: int = 0  # DataLoader worker processes; 0 augments in the training process
    # Train on units of two crops' height: the two halves of a frame (data.split.frame_halves) joined, every other crop
    # in the middle of a unit of its own with mirrored, unscored rows around it (data.frames.whole_frame_units).
    train_on_frames: bool = False
    # The unlabeled pool of semi-supervised training (semi.weight > 0): "" means this file's test_set plus the images
    # (never the masks) of the validation and local-test parts; else another .npz, whose images are all used.
    unlabeled: str = ""


@dataclass
class AugmentConfig:
    """Each transform's probability (0 switches it off) and strength."""

    hflip: float = 0.5
    vflip: float = 0.0  # rover crops have a sky side: upside-down terrain does not occur at test time
    # Zoom: with this probability the crop is scaled about its centre by a factor in 1 / (1 + zoom_limit) ..
    # 1 + zoom_limit (in or out equally often), the border reflected: the terrain at other distances
    zoom: float = 0.0
    zoom_limit: float = 0.25
    elastic: float = 0.3
    elastic_alpha: float = 20.0
    elastic_sigma: float = 5.0
    grid_distortion: float = 0.3
    grid_distort_limit: float = 0.2
    clahe: float = 0.0
    clahe_clip_limit: float = 2.0
    brightness_contrast: float = 0.5
    brightness_limit: float = 0.2
    contrast_limit: float = 0.2
    gamma: float = 0.3
    gamma_limit: float = 20.0  # gamma drawn from 100 +- this, in percent
    # Rare-class crops: with this probability a big-rock image is replaced by a crop centred on one of its big-rock
    # pixels, a random fraction rare_crop_min_scale..1 of each side, resized back (a zoom on the rock).
    rare_crop: float = 0.0
    rare_crop_min_scale: float = 0.5
    # Copy-paste (data/mixing.py): with this probability, 1..copy_paste_count connected big-rock regions cut from
    # training crops are pasted onto the crop (scaled 0.75..1.25, flipped half of the time).
    copy_paste: float = 0.0
    copy_paste_count: int = 2
    # with this probability, a box (10-50 % of the crop) comes from another training crop: +0.009 cross-validated
    # over three seeds (README, Recipes), the one single-model lever whose paired interval clears zero
    cutmix: float = 0.5
    # Frame shift (data/mixing.py): with this probability a crop whose frame's other half is also in the training part
    # (data.split.frames_among) is replaced by a window of the crop's size cut from the joined frame at a random
    # height between the two halves: terrain views that straddle the seam, at the same cost. +0.011 cross-validated on
    # mars64 for the run's vote, +0.024 for its best epoch alone (one seed; README, Recipes). 0 with
    # data.train_on_frames, whose units are whole frames already.
    frame_shift: float = 0.5


@dataclass
class ModelConfig:
    # res_unet: a U-Net with a strided stem and residual encoder blocks, about 4x fewer FLOPs per image than
    # the plain "unet" (the study's baseline), which on a CPU buys more epochs in the same time.
    name: str = "res_unet"
    width: int = 32
    options: dict[str, Any] = field(default_factory=dict)  # extra keyword arguments of the model class
    # members > 1 trains that many networks one after another, from seeds seed, seed + 1, ..., each keeping its own
    # model (optim.keep; engine.fit), and predicts their soft vote (models.Ensemble): members times the
    # training and prediction time. One network of 80 epochs beat two of 40 voting, in the same training time
    # (cross-validated on mars64; README, Recipes).
    members: int = 1


@dataclass
class LossConfig:
    # "dice_focal" (the study's), "dice", "focal", "cross_entropy", "ce_dice", "lovasz_focal" (Lovasz-softmax + focal)
    name: str = "dice_focal"
    # dice_weight scales the first term (Dice, or Lovasz-softmax in "lovasz_focal"); focal_weight the second (focal, or
    # cross-entropy in "ce_dice")
    dice_weight: float = 1.0
    focal_weight: float = 1.0
    focal_gamma: float = 2.0
    dice_per_class: bool = False  # Dice as the weighted mean of per-class Dice losses (see losses.DiceLoss)
    class_weights: str = "inverse_sqrt"  # "none", "inverse", "inverse_sqrt", or "manual"
    manual_weights: list[float] = field(default_factory=lambda: [0.0, 1.0, 1.0, 1.0, 1.0])
    ignore_background: bool = True  # the metric never scores a pixel whose true label is 0


@dataclass
class OptimConfig:
    optimizer: str = "adamw"  # "adam" or "adamw"
    lr: float = 1e-3  # the study's 3e-4 learned slower and ended lower at the same epochs (README, Recipes)
    weight_decay: float = 1e-4
    batch_size: int = 64
    # 80 with cosine, to the end of the schedule: one network still learning at the end of 40 gained +0.02
    # cross-validated on mars64, and beat two networks of 40 voting in the same time (README, Recipes).
    epochs: int = 80
    minutes: float = 0.0  # wall-clock budget for training; 0 means no limit besides epochs
    scheduler: str = "cosine"  # "cosine" (with warmup), "cosine_restarts", "plateau", "onecycle" or "none"
    warmup_epochs: int = 1
    plateau_patience: int = 3
    # Epochs without a better validation mIoU before stopping (with keep "best"); 0 (the default) trains every epoch.
    early_stopping_patience: int = 0
    # The run's model (best.pt): "best_and_last", the soft vote of the epoch with the best validation mIoU and the last
    # epoch's (+0.005 cross-validated on mars64 against the last alone, big rock 0.220 -> 0.246, the same training at
    # twice the prediction time; one network when the best epoch is the last; README, Recipes); "last", the last
    # epoch's, at the end of the schedule (+0.013 for two 40-epoch networks voting against the best epoch with early
    # stopping after 15); or "best", the best epoch alone.
    # "last" (and the vote's second network) assumes the schedule has ended by then: cosine or one-cycle over the
    # epochs, or over a time budget with one process; with "plateau" or "none", or a budget shared by several processes
    # (whose schedule follows steps), "best" may be the better choice.
    keep: str = "best_and_last"
    ema_decay: float = 0.99  # per step; the averaged weights are the ones scored and saved (0 disables)


@dataclass
class SemiConfig:
    """Semi-supervised training on data.unlabeled (semi.py): FixMatch-style consistency with the EMA as teacher, or
    offline self-training from finished runs (teachers)."""

    weight: float = 0.0  # of the unlabeled loss against the labeled one; 0 switches it off
    threshold: float = 0.9  # a pseudo-label counts where the teacher's probability is at least this
    rare_threshold: float = 0.7  # ... and at least this where it says big rock (class-aware)
    batch_size: int = 32  # unlabeled crops per step (shared out among processes), next to optim.batch_size labeled
    # Offline self-training: run directories whose best checkpoints label the pool once, before training, instead
    # of the EMA labelling each batch; several are an ensemble, their probabilities averaged (distillation).
    teachers: list[str] = field(default_factory=list)
    # "cross_entropy" on the confident pixels over all pixels (FixMatch); "recipe": the labeled loss (loss.*,
    # class weights included) with pseudo-labels as labels and unsure pixels as background (loss.ignore_background);
    # "soft" (with teachers): the KL divergence from the teachers' averaged probabilities of classes 1..4 (without
    # their big-rock scales) on every pixel: distillation through soft targets, to which the thresholds do not apply
    loss: str = "cross_entropy"


@dataclass
class Config:
    seed: int = 0
    device: str = "auto"  # "auto", "cpu" or "cuda"
    threads: int = 0  # torch CPU threads; 0 picks the number of physical cores
    # "auto": bf16 autocast on CUDA and on CPUs with native bf16 (avx512_bf16, amx_bf16), else fp32; "fp32" or
    # "bf16" force one (precision.py). A run saves the precision it resolved to, so a resume keeps it.
    precision: str = "auto"
    # The precision of inference: predict, evaluate, the Python API and a run's reported figures. fp32 by default, so
    # that a run, its Python model and its exported ONNX graph (fp32) give the same labels; "bf16" (or "auto", which
    # resolves as `precision` does) is about 1.4x faster on a CPU with native bf16. Per-epoch validation and teacher
    # labelling run in the training precision: they are part of training.
    inference_precision: str = "fp32"
    tta: bool = True  # flip test-time augmentation when scoring the local test part and predicting
    # Crops that are the two halves of one camera frame (data.split.frame_halves) are predicted together, each seeing
    # the other across the seam: +0.006 cross-validated on mars64 for the same trained networks (README, Recipes).
    whole_frames: bool = True
    # Scales at which each image is also predicted (resized, padded to the model's input multiple, its probabilities
    # resized back) and averaged, flips included; [1.0] predicts at the data's own scale only. 0.875 as well: +0.006
    # cross-validated on mars64 for the default's 80-epoch networks, big rock 0.196 -> 0.220, at 1.77x the
    # prediction time (README, Recipes).
    tta_scales: list[float] = field(default_factory=lambda: [1.0, 0.875])
    # Multiplies the big-rock probability before the argmax (predict.labels_from_probabilities). 0 (the default)
    # means: choose it on the validation part after training (from evaluation.BIG_ROCK_SCALES); the choice is stored
    # in best.pt. The models predict big rock too rarely; on mars64, a scale chosen on one half of the validation
    # part raised mIoU on the other half in 80-95 % of random halvings (README, Recipes).
    big_rock_scale: float = 0.0
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    semi: SemiConfig = field(default_factory=SemiConfig)


# Fields of AugmentConfig that set a transform's strength; every other one is a probability.
AUGMENT_STRENGTH_SUFFIXES = ("_alpha", "_sigma", "_limit", "_scale", "_count")

CHOICES = {
    "data.sampler": ("repeat", "weighted"),
    "data.in_channels": (1, 3),
    "device": ("auto", "cpu", "cuda"),
    "precision": ("auto", "fp32", "bf16"),
    "inference_precision": ("auto", "fp32", "bf16"),
    "loss.name": ("dice_focal", "dice", "focal", "cross_entropy", "ce_dice", "lovasz_focal"),
    "loss.class_weights": ("none", "inverse", "inverse_sqrt", "manual"),
    "optim.optimizer": ("adam", "adamw"),
    "optim.scheduler": ("cosine", "cosine_restarts", "plateau", "onecycle", "none"),
    "optim.keep": ("best_and_last", "last", "best"),
    "semi.loss": ("cross_entropy", "recipe", "soft"),
}
NON_NEGATIVE = (
    "optim.weight_decay",
    "optim.minutes",
    "optim.warmup_epochs",
    "optim.early_stopping_patience",
    "data.num_workers",
    "data.curriculum_epochs",
    "threads",
    "optim.ema_decay",
    "big_rock_scale",
    "data.split_seed",
    "loss.dice_weight",
    "loss.focal_weight",
    "loss.focal_gamma",
    "seed",
    "semi.weight",
)
POSITIVE = (
    "optim.lr",
    "optim.batch_size",
    "optim.epochs",
    "model.width",
    "model.members",
    "data.oversample_factor",
    "data.frame_size",
    "optim.plateau_patience",
    "augment.copy_paste_count",
    "semi.batch_size",
)


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check `value` against a dataclass field's type; ints are accepted where floats are expected, and so are
    strings such as "1e-3" (YAML reads an exponent without a decimal point as a string)."""
    origin = typing.get_origin(annotation)
    if annotation is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if annotation is float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    if annotation in (int, str, bool) and type(value) is annotation:
        return value
    if origin in (list, dict) and isinstance(value, origin):
        return value
    expected = getattr(annotation, "__name__", str(annotation))
    raise ConfigError(f"{where}: found {value!r} ({type(value).__name__}), expected {expected}")


def _merge(target: Any, updates: dict, source: str, *, prefix: str = "") -> None:
    hints = typing.get_type_hints(type(target))
    names = {f.name for f in fields(target)}
    for key, value in updates.items():
        where = f"{source}: field '{prefix}{key}'"
        if key not in names:
            raise ConfigError(f"{where} is unknown; expected one of: {', '.join(sorted(names))}")
        current = getattr(target, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: found {value!r}, expected a mapping")
            _merge(current, value, source, prefix=f"{prefix}{key}.")
        else:
            setattr(target, key, _coerce(value, hints[key], where))


def get_field(config: Config, dotted: str) -> Any:
    """The value of a dotted field name, e.g. get_field(cfg, "optim.lr")."""
    value: Any = config
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def set_field(config: Config, dotted: str, value: Any) -> None:
    """Set a dotted field in place, unchecked (validate() checks a whole config)."""
    *parents, key = dotted.split(".")
    setattr(get_field(config, ".".join(parents)) if parents else config, key, value)


def dotted_names(values: dict, *, section: Any = None, prefix: str = "") -> list[str]:
    """The dotted names of the fields a nested mapping of config values sets, e.g. ["optim.lr", "seed"]. A field
    whose value is itself a mapping (model.options) is one name."""
    section = Config() if section is None else section
    names = []
    for key, value in values.items():
        current = getattr(section, key, None)
        if isinstance(value, dict) and dataclasses.is_dataclass(current):
            names.extend(dotted_names(value, section=current, prefix=f"{prefix}{key}."))
        else:
            names.append(f"{prefix}{key}")
    return names


def valid_tta_scales(scales) -> bool:
    """One or more finite numbers in 0.25..4: the factors predict.rescaled_probabilities resizes by."""
    return bool(scales) and all(
        isinstance(s, int | float) and not isinstance(s, bool) and math.isfinite(s) and 0.25 <= s <= 4 for s in scales
    )


def validate(config: Config, *, source: str = "config") -> Config:
    """Raise ConfigError for values out of range; return the config otherwise."""
    for dotted, allowed in CHOICES.items():
        if get_field(config, dotted) not in allowed:
            raise ConfigError(
                f"{source}: field '{dotted}': found {get_field(config, dotted)!r}, "
                f"expected one of {', '.join(map(str, allowed))}"
            )
    for dotted in (*NON_NEGATIVE, *POSITIVE, "data.val_fraction", "data.test_fraction", "big_rock_scale"):
        if isinstance(get_field(config, dotted), float) and not math.isfinite(get_field(config, dotted)):
            raise ConfigError(
                f"{source}: field '{dotted}': found {get_field(config, dotted)}, expected a finite number"
            )
    for dotted in NON_NEGATIVE:
        if get_field(config, dotted) < 0:
            raise ConfigError(f"{source}: field '{dotted}': found {get_field(config, dotted)}, expected >= 0")
    for dotted in POSITIVE:
        if get_field(config, dotted) <= 0:
            raise ConfigError(f"{source}: field '{dotted}': found {get_field(config, dotted)}, expected > 0")
    for f in fields(config.augment):
        value = getattr(config.augment, f.name)
        is_probability = not f.name.endswith(AUGMENT_STRENGTH_SUFFIXES)
        if not math.isfinite(value) or value < 0 or (is_probability and value > 1):
            expected = "a probability in 0..1" if is_probability else ">= 0"
            raise ConfigError(f"{source}: field 'augment.{f.name}': found {value}, expected {expected}")
    if config.data.curriculum_epochs and config.data.sampler != "repeat":
        raise ConfigError(f"{source}: field 'data.curriculum_epochs' needs data.sampler 'repeat'")
    for dotted in ("data.curriculum_epochs", "semi.weight", "augment.frame_shift"):  # crops of the file, not units
        if config.data.train_on_frames and get_field(config, dotted):
            raise ConfigError(
                f"{source}: field '{dotted}': found {get_field(config, dotted)}, expected 0 with data.train_on_frames"
            )
    if not 0 < config.augment.rare_crop_min_scale <= 1:
        raise ConfigError(
            f"{source}: field 'augment.rare_crop_min_scale': found {config.augment.rare_crop_min_scale}, "
            "expected 0 < x <= 1"
        )
    fractions = config.data.val_fraction + config.data.test_fraction
    if not (0 < config.data.val_fraction and 0 <= config.data.test_fraction and fractions < 1):
        raise ConfigError(
            f"{source}: fields 'data.val_fraction' and 'data.test_fraction': found "
            f"{config.data.val_fraction} and {config.data.test_fraction}, expected val > 0 and a sum < 1"
        )
    for dotted in ("semi.threshold", "semi.rare_threshold"):
        if not 0 <= get_field(config, dotted) <= 1:
            raise ConfigError(f"{source}: field '{dotted}': found {get_field(config, dotted)}, expected 0..1")
    if config.semi.loss == "recipe" and not config.loss.ignore_background:
        raise ConfigError(f"{source}: field 'semi.loss': 'recipe' needs loss.ignore_background (unsure pixels are 0)")
    if config.semi.loss == "soft" and config.semi.weight > 0 and not config.semi.teachers:
        raise ConfigError(
            f"{source}: field 'semi.loss': 'soft' needs semi.teachers (--teacher RUN), whose probabilities it learns"
        )
    if not all(isinstance(t, str) and t for t in config.semi.teachers):
        raise ConfigError(f"{source}: field 'semi.teachers': found {config.semi.teachers}, expected run directories")
    if config.semi.teachers and config.semi.weight <= 0:
        raise ConfigError(f"{source}: field 'semi.teachers' needs semi.weight > 0 (--semi W), found 0")
    if not valid_tta_scales(config.tta_scales):
        raise ConfigError(
            f"{source}: field 'tta_scales': found {config.tta_scales}, expected one or more numbers in 0.25..4"
        )
    weights = config.loss.manual_weights
    if len(weights) != 5 or not all(isinstance(w, int | float) and math.isfinite(w) and w >= 0 for w in weights):
        raise ConfigError(f"{source}: field 'loss.manual_weights': found {weights}, expected 5 numbers >= 0")
    _check_model(config, source)
    if config.optim.keep != "best" and config.optim.early_stopping_patience:
        raise ConfigError(
            f"{source}: field 'optim.early_stopping_patience': found {config.optim.early_stopping_patience} with "
            f"optim.keep '{config.optim.keep}', which would keep an epoch before the schedule ends; set "
            "optim.keep=best to stop "
            "early (a config.yaml written before optim.keep means that), or the patience to 0"
        )
    if config.optim.ema_decay >= 1:
        raise ConfigError(f"{source}: field 'optim.ema_decay': found {config.optim.ema_decay}, expected 0 <= x < 1")
    return config


def one_network(config: Config) -> Config:
    """`config` for a single network (model.members 1): what each member of an ensemble run trains as."""
    return dataclasses.replace(config, model=dataclasses.replace(config.model, members=1))


@dataclass(frozen=True)
class InferenceSettings:
    """How a model predicts (predict.predict_probabilities and everything built on it): its input channels, flip
    TTA, the scales it also predicts at, the precision of its forward pass, and whether the two halves of a camera
    frame are predicted together. The defaults are a bare model's: one pass, fp32, each crop alone."""

    in_channels: int = 1
    tta: bool = False
    scales: tuple[float, ...] = (1.0,)
    precision: str = "fp32"
    whole_frames: bool = False

    def replace(self, **changes) -> InferenceSettings:
        return dataclasses.replace(self, **changes)

    def describe(self) -> str:
        """E.g. "flip TTA at scales 1, 0.875, halves of a frame together" (the precision is not said)."""
        words = "flip TTA" if self.tta else "no TTA"
        if tuple(self.scales) != (1.0,):
            at_scales = "scales " + ", ".join(f"{s:g}" for s in self.scales)
            words = f"flip TTA at {at_scales}" if self.tta else f"no flips, {at_scales}"
        return words + (", halves of a frame together" if self.whole_frames else "")


def inference_settings(config: Config, *, precision: str | None = None) -> InferenceSettings:
    """How a run predicts: its input channels, flip TTA, its scales, precision (`inference_precision`, or `precision`
    where given: training's own validation passes the training precision) and whole frames. Every figure a run
    reports is predicted as `marsseg predict` would."""
    return InferenceSettings(
        in_channels=config.data.in_channels,
        tta=config.tta,
        scales=tuple(config.tta_scales),
        precision=precision or config.inference_precision,
        whole_frames=config.whole_frames,
    )


def _check_model(config: Config, source: str) -> None:
    """The model section names a model and arguments its class accepts (building it is the sure test)."""
    from marsseg.models import build_network  # imported when called: it imports torch

    try:
        build_network(config)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"{source}: field 'model': {error}") from None


def from_dict(values: dict, *, source: str = "config") -> Config:
    """The config a checkpoint carries. One written before the precision setting trained in fp32 (on a CPU), one
    written before model.members holds a single network, one written before whole_frames predicted (and was
    scored with) each crop alone, and one written before tta_scales at its own scale only: its stored big-rock scale
    and metrics were chosen and measured that way; one written before optim.keep kept the best epoch on
    validation, and one written before augment.frame_shift trained (and resumes) without it."""
    values = dict(values or {})
    added = (("model", {"members": 1}), ("optim", {"keep": "best"}), ("augment", {"frame_shift": 0.0}))
    for section, field_added in added:
        if isinstance(values.get(section, {}), dict):  # anything else is refused by _merge with its own message
            values[section] = {**field_added, **values.get(section, {})}
    config = Config()
    _merge(config, {"precision": "fp32", "whole_frames": False, "tta_scales": [1.0], **values}, source)
    return config


def load_config(path: str | None = None, *, overrides: dict | None = None) -> Config:
    """Defaults, then the YAML file at `path`, then `overrides` (dotted keys, e.g. {"optim.lr": 1e-3})."""
    config = Config()
    if path:
        if not os.path.isfile(path):
            raise ConfigError(f"{path}: config file not found")
        try:
            with open(path) as handle:
                values = yaml.safe_load(handle)
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
        if values is not None and not isinstance(values, dict):
            raise ConfigError(f"{path}: found {type(values).__name__}, expected a mapping of config fields")
        _merge(config, values or {}, path)
    for dotted, value in (overrides or {}).items():
        *parents, key = dotted.split(".")
        nested: dict = {key: value}
        for parent in reversed(parents):
            nested = {parent: nested}
        _merge(config, nested, "command line")
    return validate(config, source=path or "config")


def to_dict(config: Config) -> dict:
    return asdict(config)


def save_config(config: Config, path: str | os.PathLike) -> None:
    from marsseg.data.io import write_text_atomically

    text = yaml.safe_dump(to_dict(config), sort_keys=False)
    write_text_atomically(path, text)
