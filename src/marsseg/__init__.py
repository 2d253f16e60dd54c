"""marsseg: semantic segmentation of Mars terrain in rover images.

import marsseg
model = marsseg.load()              # the shipped model; or a run directory, a .pt model file, an .onnx file
labels = model.predict(images)      # uint8 gray (H, W) or (N, H, W) of any size -> labels 1..4
metrics = marsseg.train(data="mars.npz", out="runs/first", **{"optim.epochs": 20})
"""

__version__ = "0.1.0"


def load(path=None, *, device: str = "auto"):
    """See marsseg.api.load (imported when called, so that `import marsseg` stays light)."""
    from marsseg.api import load as load_model

    return load_model(path, device=device)


def train(*, data="", out, config=None, **overrides) -> dict:
    """See marsseg.api.train."""
    from marsseg.api import train as train_run

    return train_run(data=data, out=out, config=config, **overrides)
