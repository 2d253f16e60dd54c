"""The Ensemble model (a soft vote of networks trained apart) and its members' recipes."""

import pytest
import torch

from marsseg.config import from_dict, load_config
from marsseg.engine import member_config
from marsseg.models import Ensemble, ResUNet, build_model, build_network, create_model


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
    x = torch.randn(1, 1, 64, 128)
    with torch.no_grad():
        expected = torch.stack([net.eval()(x).softmax(dim=1) for net in nets]).mean(dim=0)
        assert torch.allclose(Ensemble(nets).eval()(x).exp(), expected, atol=1e-6)


def test_member_k_trains_one_network_from_seed_plus_k_with_its_share_of_the_budget():
    cfg = load_config(None, overrides={"model.members": 3, "seed": 5, "optim.minutes": 30})
    second = member_config(cfg, 1, minutes_spent=10.0)
    assert (second.seed, second.model.members, second.optim.minutes) == (6, 1, 10.0)
    assert (cfg.seed, cfg.model.members, cfg.optim.minutes) == (5, 3, 30)  # the run's own config is unchanged
    # a member that stopped early leaves its time to the ones after it
    assert member_config(cfg, 0).optim.minutes == 10.0
    assert member_config(cfg, 1, minutes_spent=4.0).optim.minutes == 13.0
    assert member_config(cfg, 2, minutes_spent=30.5).optim.minutes == 0.01  # nothing left: one epoch, not no limit
    assert (
        member_config(load_config(None, overrides={"model.members": 2}), 1, minutes_spent=7.0).optim.minutes == 0
    )  # no budget


def test_build_model_makes_an_ensemble_of_differently_initialised_members():
    torch.manual_seed(0)
    one = {"model.width": 8, "optim.keep": "last"}  # one network a member
    model = build_model(load_config(None, overrides={**one, "model.members": 2}))
    assert isinstance(model, Ensemble) and len(model.members) == 2
    first, second = (next(m.parameters()) for m in model.members)
    assert first.shape == second.shape and not torch.equal(first, second)
    assert not isinstance(build_model(load_config(None, overrides={**one, "model.members": 1})), Ensemble)
    assert not isinstance(build_network(load_config(None, overrides={"model.width": 8, "model.members": 2})), Ensemble)
    # optim.keep "best_and_last" (the default): each member is the vote of two networks, its best epoch and its last
    vote = build_model(load_config(None, overrides={"model.width": 8}))
    assert isinstance(vote, Ensemble) and [type(m) for m in vote.members] == [ResUNet, ResUNet]
    votes = build_model(load_config(None, overrides={"model.width": 8, "model.members": 3}))
    assert len(votes.members) == 3 and all(isinstance(m, Ensemble) and len(m.members) == 2 for m in votes.members)
    with pytest.raises(ValueError, match="2 or more members"):
        Ensemble(members(1))


def test_build_model_given_weights_takes_the_shape_they_were_saved_in():
    # a run whose best epoch was its last holds that network once, not a vote of it with itself
    cfg = load_config(None, overrides={"model.width": 8})
    single = build_network(cfg).state_dict()
    model = build_model(cfg, weights=single)
    assert not isinstance(model, Ensemble)
    model.load_state_dict(single)  # strict: every tensor has its place
    assert isinstance(build_model(cfg, weights=build_model(cfg).state_dict()), Ensemble)
    # members of an ensemble run may differ: one held once, one a vote of two networks
    torch.manual_seed(1)
    cfg3 = load_config(None, overrides={"model.width": 8, "model.members": 2})
    saved = Ensemble([build_network(cfg3), Ensemble([build_network(cfg3), build_network(cfg3)])])
    x = torch.rand(1, 1, 64, 128)
    for order, shapes in (([0, 1], [ResUNet, Ensemble]), ([1, 0], [Ensemble, ResUNet])):  # each member's own
        saved = Ensemble([saved.members[k] for k in order])
        model = build_model(cfg3, weights=saved.state_dict())
        assert [type(m) for m in model.members] == shapes
        model.load_state_dict(saved.state_dict())
        with torch.no_grad():
            torch.testing.assert_close(model.eval()(x), saved.eval()(x))


def test_a_checkpoint_config_without_members_holds_one_network():
    assert from_dict({"model": {"name": "unet", "width": 16}}).model.members == 1
    assert from_dict({"model": {"members": 3}}).model.members == 3
