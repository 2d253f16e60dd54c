"""The learning-rate schedule, the EMA's warm-up, and the first sanity check (overfitting one batch)."""

import pytest
import torch

from marsseg.cli import overfit_one_batch
from marsseg.training import ema_average, lr_factor
from tests.tiny_runs import tiny_config


def test_lr_schedule_warms_up_then_anneals_to_zero():
    assert lr_factor(0.0, 0.1, "cosine") == pytest.approx(0.1)
    assert lr_factor(0.1, 0.1, "cosine") == pytest.approx(1.0)
    assert lr_factor(0.55, 0.1, "cosine") == pytest.approx(0.5)
    assert lr_factor(1.0, 0.1, "cosine") == pytest.approx(0.0)
    assert lr_factor(0.5, 0.1, "none") == 1.0


def test_warm_restarts_anneal_three_times_in_cycles_of_doubling_length():
    # warmup 0.3, then cycles over 0.1, 0.2 and 0.4 of training (1, 2 and 4 sevenths of the remaining 0.7)
    assert lr_factor(0.15, 0.3, "cosine_restarts") == pytest.approx(0.1 + 0.9 * 0.5)  # still warming up
    assert lr_factor(0.3, 0.3, "cosine_restarts") == pytest.approx(1.0)
    assert lr_factor(0.35, 0.3, "cosine_restarts") == pytest.approx(0.5)  # half way down the first cycle
    assert lr_factor(0.3999, 0.3, "cosine_restarts") < 1e-5
    assert lr_factor(0.4, 0.3, "cosine_restarts") == pytest.approx(1.0)  # restart
    assert lr_factor(0.5, 0.3, "cosine_restarts") == pytest.approx(0.5)
    assert lr_factor(0.6, 0.3, "cosine_restarts") == pytest.approx(1.0)  # second restart
    assert lr_factor(0.8, 0.3, "cosine_restarts") == pytest.approx(0.5)
    assert lr_factor(1.0, 0.3, "cosine_restarts") == pytest.approx(0.0)


def test_ema_warms_up_so_the_average_forgets_the_initial_weights():
    average = ema_average(0.99)
    value = torch.tensor(1.0)  # e.g. a batch-norm running variance at initialisation
    for n in range(300):
        value = average(value, torch.tensor(0.001), torch.tensor(n))
    assert value.item() < 0.0015  # a fixed 0.99 decay would still hold 0.99**300 ~ 0.05 of the initial 1.0
    assert average(torch.tensor(1.0), torch.tensor(0.0), torch.tensor(10_000)).item() == pytest.approx(0.99)


@pytest.mark.slow
def test_overfit_one_batch_reaches_target(tiny_npz):
    cfg = tiny_config(tiny_npz, **{"model.width": 16})
    steps, miou = overfit_one_batch(cfg, batch_size=8, target=0.9, max_steps=200)
    assert miou >= 0.9 and steps < 200
