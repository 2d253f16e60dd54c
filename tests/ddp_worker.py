"""Run under torchrun by tests/test_distributed.py: trains one short epoch and saves this rank's parameters."""

import sys
from dataclasses import fields

import torch
import torch.distributed as dist

from marsseg.config import AUGMENT_STRENGTH_SUFFIXES, AugmentConfig, load_config
from marsseg.engine import fit

# No augmentation, no oversampling, a constant learning rate: the run is a pure function of the batches.
CONFIG = {
    "model.width": 8,
    "model.members": 1,
    "optim.batch_size": 32,
    "optim.epochs": 1,
    "optim.scheduler": "none",
    "data.oversample_factor": 1,
    **{f"augment.{f.name}": 0.0 for f in fields(AugmentConfig) if not f.name.endswith(AUGMENT_STRENGTH_SUFFIXES)},
    "threads": 1,
    "device": "cpu",  # gloo on CPU, compared with a CPU reference (a GPU machine may have one GPU)
    "precision": "fp32",  # the reference trains in fp32
}

if __name__ == "__main__":
    out, data = sys.argv[1], sys.argv[2]
    result = fit(load_config(None, overrides={**CONFIG, "data.path": data}), f"{out}/run", force=True, score_test=False)
    params = {name: p.detach().clone() for name, p in result.model.named_parameters()}
    torch.save(params, f"{out}/rank{dist.get_rank()}.pt")
