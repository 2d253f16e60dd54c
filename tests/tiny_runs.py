"""Settings for the tests that train on the tiny synthetic data set, in seconds."""

from marsseg.config import Config, load_config

FAST = ["--width", "8", "--batch-size", "32", "--set", "augment.brightness_contrast=0"]  # command-line flags


def tiny_config(tiny_npz, **overrides) -> Config:
    values = {"data.path": str(tiny_npz), "model.width": 8, "optim.batch_size": 32, "optim.epochs": 2, "threads": 1}
    values.update(overrides)
    return load_config(None, values)
