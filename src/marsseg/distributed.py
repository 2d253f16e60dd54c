"""Several training processes (started by torchrun): where this process stands (Ranks), joining the process group,
the checks a run must pass to be shared out, and the few values the processes exchange (the stop flag, the
validation confusion matrix)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from marsseg.config import Config
from marsseg.data.split import frame_units
from marsseg.errors import UserError
from marsseg.evaluation import Evaluation
from marsseg.metrics import iou_per_class, mean_iou
from marsseg.precision import resolve_device


@dataclass
class Ranks:
    """Where this process stands among the training processes (torchrun sets WORLD_SIZE, RANK, LOCAL_RANK)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def check_processes_per_gpu(device_name: str, processes: int) -> None:
    """On a GPU each training process of a machine needs its own GPU (NCCL fails with two ranks on one)."""
    if processes > 1 and resolve_device(device_name).type == "cuda" and processes > torch.cuda.device_count():
        raise UserError(
            f"{processes} training processes on this machine need {processes} GPUs; it has "
            f"{torch.cuda.device_count()} (use --set device=cpu to run the processes on the CPU)"
        )


def init_distributed(device_name: str) -> Ranks:
    """Join the process group when started by torchrun: gloo on CPU, NCCL on GPU. One process: no group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Ranks()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        cuda = resolve_device(device_name).type == "cuda"
        if cuda:
            check_processes_per_gpu(device_name, int(os.environ.get("LOCAL_WORLD_SIZE", world)))
            torch.cuda.set_device(local_rank)
        # The small reductions (confusion matrices, the stop flag) are CPU tensors: gloo carries them beside NCCL.
        dist.init_process_group("cuda:nccl,cpu:gloo" if cuda else "gloo")
    return Ranks(dist.get_rank(), dist.get_world_size(), local_rank)


def check_config_for_ranks(cfg: Config, ranks: Ranks) -> None:
    """Each process takes an equal share of every batch, drawn by a DistributedSampler."""
    if ranks.world > 1 and cfg.optim.batch_size % ranks.world:
        raise UserError(f"optim.batch_size {cfg.optim.batch_size} must divide among {ranks.world} processes")
    if ranks.world > 1 and cfg.data.sampler != "repeat":
        raise UserError("data.sampler 'weighted' is not supported with several processes; use 'repeat'")


def process_device(device_name: str, ranks: Ranks) -> torch.device:
    """The device this process trains on: on CUDA with several processes, the GPU of its local rank."""
    device = resolve_device(device_name)
    if device.type == "cuda" and ranks.world > 1:
        device = torch.device("cuda", ranks.local_rank)
    return device


def decided_by_main(flag: bool, ranks: Ranks) -> bool:
    """Rank 0's `flag`, on every rank."""
    if ranks.world == 1:
        return flag
    tensor = torch.tensor([float(flag)])
    dist.broadcast(tensor, 0)
    return bool(tensor.item())


def summed_evaluation(evaluation: Evaluation, ranks: Ranks) -> Evaluation:
    """Sum the ranks' confusion matrices (each scored its own shard) into the whole set's evaluation."""
    if ranks.world == 1:
        return evaluation
    matrix = torch.from_numpy(evaluation.matrix).clone()
    dist.all_reduce(matrix)
    return Evaluation(matrix.numpy(), mean_iou(matrix), iou_per_class(matrix))


def frame_shard(below: np.ndarray, ranks: Ranks) -> tuple[np.ndarray, np.ndarray]:
    """This rank's share of a set whose frames are `below` (data.split.frame_halves over the whole set): every
    `world`-th unit, a unit being the two halves of a frame or a crop alone. Returns the positions in the set and
    their `below` within the shard, so that each rank predicts the pairs the whole set has, and only those."""
    positions = np.array(
        sorted(i for unit in frame_units(below)[ranks.rank :: ranks.world] for i in unit), dtype=np.int64
    )
    place = np.full(len(below) + 1, -1, dtype=np.int64)  # place[-1] stays -1: "no crop below"
    place[positions] = np.arange(len(positions))
    return positions, place[below[positions]]
