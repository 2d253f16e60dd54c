"""Settings for the tests that train on the tiny synthetic data set, in seconds."""

from marsseg.config import Config, load_config

# command-line flags; one network unless a test asks for the default's ensemble (--members after FAST overrides it)
FAST = ["--width", "8", "--batch-size", "32", "--set", "augment.brightness_contrast=0", "--members", "1"]

# A test that compares two runs number for number trains on the CPU, where a seed repeats a run bit for bit; on a GPU,
# cuDNN's kernels make repeats differ in the last digits (README, "The test suite on CUDA"). Other tests train where
# "auto" puts them.
ON_CPU = {"device": "cpu"}


def tiny_config(tiny_npz, **overrides) -> Config:
    values = {
        "data.path": str(tiny_npz),
        "model.width": 8,
        "optim.batch_size": 32,
        "optim.epochs": 2,
        "threads": 1,
        "model.members": 1,
    }
    values.update(overrides)
    return load_config(None, overrides=values)
