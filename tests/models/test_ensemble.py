"""The Ensemble model: a soft vote in eval mode, each member on its own loss in training."""

import pytest
import torch

from marsseg.config import from_dict, load_config
from marsseg.losses import build_loss
from marsseg.models import Ensemble, create_model
from marsseg.training import build_model, compute_loss


def members(count: int, name: str = "res_unet", **kwargs) -> list[torch.nn.Module]:
    torch.manual_seed(0)
    return [create_model(name, width=8, **kwargs) for _ in range(count)]


def test_eval_output_is_the_log_of_the_members_mean_probabilities():
    nets = members(3)
    ensemble = Ensemble(nets).eval()
    x = torch.randn(2, 1, 64, 128)
    with torch.no_grad():
        expected = torch.stack([net.eval()(x).softmax(dim=1) for net in nets]).mean(dim=0)
        assert torch.allclose(ensemble(x).softmax(dim=1), expected, atol=1e-6)
        assert torch.allclose(ensemble(x).exp(), expected, atol=1e-6)  # already log-probabilities
    assert ensemble.input_multiple == nets[0].input_multiple


def test_deep_supervised_members_vote_with_their_final_logits():
    nets = members(2, "dual_unet", deep_supervision=True)
    ensemble = Ensemble(nets)
    x = torch.randn(1, 1, 64, 128)
    outputs = ensemble.train()(x)
    assert isinstance(outputs, list) and all(isinstance(o, tuple) and len(o) == 2 for o in outputs)
    with torch.no_grad():
        expected = torch.stack([net.eval()(x).softmax(dim=1) for net in nets]).mean(dim=0)
        assert torch.allclose(ensemble.eval()(x).exp(), expected, atol=1e-6)


def test_training_loss_is_the_mean_of_the_members_losses_and_each_learns_from_its_own():
    cfg = load_config(None, {"model.width": 8})
    loss_fn = build_loss(cfg.loss, torch.tensor([0.0, 1.0, 1.0, 1.0, 2.0]))
    nets = members(2)
    ensemble = Ensemble(nets).train()
    x = torch.randn(4, 1, 64, 128)
    target = torch.randint(0, 5, (4, 64, 128))
    loss = compute_loss(loss_fn, ensemble(x), target)
    alone = [compute_loss(loss_fn, net(x), target) for net in nets]
    assert loss.item() == pytest.approx((alone[0].item() + alone[1].item()) / 2, rel=1e-5)
    loss.backward()
    first_grads = [p.grad.clone() for p in nets[0].parameters()]
    for net in nets:
        net.zero_grad()
    alone = compute_loss(loss_fn, nets[0](x), target) / 2  # member 0's gradient is its own loss's, halved
    alone.backward()
    for got, own in zip(first_grads, (p.grad for p in nets[0].parameters()), strict=True):
        assert torch.allclose(got, own, atol=1e-6)


def test_build_model_makes_an_ensemble_of_differently_initialised_members():
    torch.manual_seed(0)
    model = build_model(load_config(None, {"model.width": 8, "model.members": 2}))
    assert isinstance(model, Ensemble) and len(model.members) == 2
    first, second = (next(m.parameters()) for m in model.members)
    assert first.shape == second.shape and not torch.equal(first, second)
    assert not isinstance(build_model(load_config(None, {"model.width": 8})), Ensemble)
    with pytest.raises(ValueError, match="2 or more members"):
        Ensemble(members(1))


def test_a_checkpoint_config_without_members_holds_one_network():
    assert from_dict({"model": {"name": "unet", "width": 16}}).model.members == 1
    assert from_dict({"model": {"members": 3}}).model.members == 3
