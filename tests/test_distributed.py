"""DistributedDataParallel on CPU (gloo): two processes against single-process training on the same batches."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from marsseg.cli import main
from marsseg.config import load_config
from marsseg.data.dataset import SegmentationDataset
from marsseg.data.prepare import prepare_data
from marsseg.losses import build_loss
from marsseg.models import build_network
from marsseg.training import seed_everything, training_memory_format
from tests.ddp_worker import CONFIG

WORKER = Path(__file__).with_name("ddp_worker.py")


def reference_parameters(cfg, world: int = 2) -> dict:
    """Single-process training on the same global batches.

    CPU has no SyncBatchNorm, so each process normalises its own half of a global batch; DDP then averages the
    halves' gradients. The single-process equivalent is one optimizer step per global batch over the gradient
    average of its per-rank halves, each forwarded on its own.
    """
    seed_everything(cfg.seed)
    prepared = prepare_data(cfg.data)
    data, split = prepared.data, prepared.split
    device = torch.device("cpu")
    memory_format = training_memory_format(cfg, device)
    model = build_network(cfg).to(memory_format=memory_format)
    loss_fn = build_loss(cfg.loss, data.masks[split.train])
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    dataset = SegmentationDataset(data.images, data.masks, split.train, pipeline=None, in_channels=cfg.data.in_channels)
    per_rank = []
    for rank in range(world):
        sampler = torch.utils.data.DistributedSampler(dataset, world, rank, shuffle=True, seed=cfg.seed, drop_last=True)
        sampler.set_epoch(0)
        per_rank.append(list(torch.utils.data.BatchSampler(sampler, cfg.optim.batch_size // world, drop_last=True)))
    model.train()
    for step in range(len(per_rank[0])):
        optimizer.zero_grad()
        for rank in range(world):
            items = [dataset[i] for i in per_rank[rank][step]]
            x = torch.stack([a for a, _ in items]).contiguous(memory_format=memory_format)
            y = torch.stack([b for _, b in items])
            (loss_fn(model(x), y) / world).backward()
        optimizer.step()
    return {name: p.detach() for name, p in model.named_parameters()}


@pytest.mark.slow
def test_two_processes_stay_identical_and_match_single_process_training(tmp_path, tiny_npz):
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(WORKER),
        str(tmp_path),
        str(tiny_npz),
    ]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    rank0 = torch.load(tmp_path / "rank0.pt")
    rank1 = torch.load(tmp_path / "rank1.pt")
    assert rank0.keys() == rank1.keys()
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    cfg = load_config(None, overrides={**CONFIG, "data.path": str(tiny_npz)})
    reference = reference_parameters(cfg)
    assert max((rank0[k] - reference[k]).abs().max().item() for k in rank0) < 1e-4
    seed_everything(cfg.seed)
    initial = dict(build_network(cfg).named_parameters())  # the same seeded initialisation, before training
    assert max((rank0[k] - initial[k]).abs().max().item() for k in rank0) > 1e-3  # the steps did move the weights
    # rank 0 alone wrote the run files
    assert (tmp_path / "run" / "last.pt").is_file() and (tmp_path / "run" / "metrics.csv").is_file()


@pytest.mark.slow
def test_an_ensemble_run_trains_each_member_on_two_processes_and_votes_once(tmp_path, tiny_npz):
    from marsseg.checkpoints import load_model
    from marsseg.models import Ensemble

    run = tmp_path / "run"
    flags = ["--width", "8", "--batch-size", "32", "--epochs", "1", "--set", "threads=1", "--set", "device=cpu"]
    assert main(["train", "--data", str(tiny_npz), "--out", str(run), *flags, "--members", "2", "--nproc", "2"]) == 0
    model, cfg = load_model(run)
    assert isinstance(model, Ensemble) and cfg.model.members == 2
    for k, net in enumerate(model.members):
        own = load_model(run / f"member_{k}")[0]
        assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), own.state_dict().values(), strict=True))
    assert (run / "metrics.json").is_file() and len((run / "member_1" / "metrics.csv").read_text().splitlines()) == 2


def test_more_processes_than_gpus_is_a_one_line_error(tmp_path, tiny_npz, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a machine with one GPU
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    out = tmp_path / "run"
    assert main(["train", "--data", str(tiny_npz), "--out", str(out), "--nproc", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "need 2 GPUs; it has 1" in err and not out.exists()


def test_a_resumed_run_is_checked_against_its_own_device(tmp_path):
    from marsseg.checkpoints import run_device_name
    from marsseg.config import save_config

    save_config(load_config(None, overrides={"device": "cpu"}), tmp_path / "config.yaml")
    assert run_device_name(load_config(), tmp_path, resume=True) == "cpu"  # the run's, not the default "auto"
    assert run_device_name(load_config(), tmp_path, resume=False) == "auto"


def test_validation_shards_keep_the_halves_of_a_frame_on_one_rank():
    from marsseg.data.split import frame_halves
    from marsseg.distributed import Ranks, frame_shard
    from tests.frames import shuffled_halves

    images, frame_of = shuffled_halves(10, seed=6)
    images = np.concatenate([images, np.random.default_rng(7).integers(0, 256, (3, 64, 128), dtype=np.uint8)])
    below = frame_halves(images)
    assert (below >= 0).sum() >= 9
    shards = [frame_shard(below, Ranks(rank, 3)) for rank in range(3)]
    assert sorted(np.concatenate([positions for positions, _ in shards]).tolist()) == list(range(23))  # each once
    for positions, frames in shards:  # the whole set's pairs, and only those, in shard positions
        expected = [positions.tolist().index(b) if b >= 0 else -1 for b in below[positions]]
        assert frames.tolist() == expected
    assert max(len(p) for p, _ in shards) - min(len(p) for p, _ in shards) <= 2  # units dealt out evenly
