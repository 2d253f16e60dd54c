"""Semi-supervised training (semi.py): pseudo-labels and their class-aware thresholds, the strong view, the
unlabeled loss, the pool, and the step and run that use them; offline teachers that label the pool once."""

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from marsseg import semi as semi_module
from marsseg.checkpoints import load_model
from marsseg.config import ConfigError, inference_settings, load_config
from marsseg.data.prepare import prepare_data
from marsseg.engine import fit
from marsseg.losses import IGNORED, build_loss, pseudo_label_loss, soft_target_loss
from marsseg.predict import predict_probabilities, scale_big_rock
from marsseg.semi import (
    PseudoLabeled,
    UnlabeledStream,
    confident_labels,
    pseudo_labels,
    strong_view,
    unlabeled_images,
)
from marsseg.teachers import label_pool
from marsseg.training import compute_loss, training_step
from tests.tiny_runs import ON_CPU, tiny_config


class FixedLogits(nn.Module):
    """A teacher that answers the same logits whatever it sees."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = logits

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(len(images), -1, -1, -1)


def logits_for(probabilities: list[list[float]]) -> torch.Tensor:
    """(1, 5, 1, P): logits whose softmax over classes 1..4 is each pixel's probabilities; background is huge."""
    classes = torch.tensor(probabilities).log().T  # (4, P)
    background = torch.full((1, classes.shape[1]), 50.0)
    return torch.cat([background, classes])[None, :, None, :]


def test_pseudo_labels_keep_confident_pixels_with_a_lower_bar_for_big_rock():
    probabilities = [
        [0.95, 0.03, 0.01, 0.01],  # soil, sure: kept
        [0.80, 0.10, 0.05, 0.05],  # soil, unsure: ignored
        [0.05, 0.05, 0.10, 0.80],  # big rock at 0.8: kept by the rare threshold 0.7
        [0.10, 0.10, 0.15, 0.65],  # big rock at 0.65: ignored
    ]
    teacher = FixedLogits(logits_for(probabilities))
    labels = pseudo_labels(teacher, torch.zeros(2, 1, 1, 4), 0.9, 0.7, "cpu")
    assert labels.tolist() == [[[1, IGNORED, 4, IGNORED]]] * 2  # background, though the largest logit, never
    same_bar = pseudo_labels(teacher, torch.zeros(1, 1, 1, 4), 0.9, 0.9, "cpu")
    assert same_bar.tolist() == [[[1, IGNORED, IGNORED, IGNORED]]]


def test_pseudo_labels_use_eval_mode_and_give_the_mode_back():
    teacher = nn.Sequential(nn.Conv2d(1, 5, 1), nn.BatchNorm2d(5), nn.Dropout(0.9))
    teacher.train()
    images = torch.randn(4, 1, 8, 8)
    first = pseudo_labels(teacher, images, 0.0, 0.0, "cpu")
    assert teacher.training  # given back
    second = pseudo_labels(teacher, images, 0.0, 0.0, "cpu")
    assert (first != IGNORED).all() and torch.equal(first, second)  # no dropout noise: the same answer twice
    teacher.train()
    noisy = [teacher(images).argmax(1) for _ in range(2)]
    assert not torch.equal(*noisy)  # (in training mode, dropout 0.9 would change it)


def test_strong_view_moves_labels_with_their_pixels_and_is_seeded():
    batch = 64
    targets = torch.arange(1, 5).repeat(batch // 4)[:, None, None].expand(batch, 16, 32).clone()  # one label each
    images = targets[:, None].float() / 4  # the image encodes the label
    views, mixed_targets = strong_view(images, targets, torch.Generator().manual_seed(0))
    again = strong_view(images, targets, torch.Generator().manual_seed(0))
    assert torch.equal(views, again[0]) and torch.equal(mixed_targets, again[1])
    mixed = [(mixed_targets[i] != targets[i]).any().item() for i in range(batch)]
    assert 0.25 < np.mean(mixed) < 0.75  # CutMix on about half (a partner with the same label hides a few)
    for i in np.flatnonzero(mixed):
        rows, cols = torch.nonzero(mixed_targets[i] != targets[i], as_tuple=True)
        box = mixed_targets[i, rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert (box == box[0, 0]).all() and box.numel() == len(rows)  # one rectangle of one other crop's label
    # intensity changes keep each crop's own picture: within a crop the pixels of one label stay close together
    for i in range(batch):
        for label in mixed_targets[i].unique():
            assert views[i, 0][mixed_targets[i] == label].std() < 0.2
    assert not torch.allclose(views, images)


def test_pseudo_label_loss_is_cross_entropy_over_scored_classes_on_kept_pixels_per_pixel():
    logits = torch.randn(2, 5, 3, 4)
    targets = torch.randint(1, 5, (2, 3, 4))
    targets[0, 0] = IGNORED
    expected = F.cross_entropy(logits[:, 1:], (targets - 1).clamp(min=0), reduction="none")
    expected = (expected * (targets != IGNORED)).sum() / targets.numel()
    assert pseudo_label_loss(logits, targets).item() == pytest.approx(expected.item(), rel=1e-6)
    assert pseudo_label_loss(logits, torch.full_like(targets, IGNORED)).item() == 0.0
    logits.requires_grad_(True)
    pseudo_label_loss(logits, targets).backward()
    assert (logits.grad[:, 0] == 0).all()  # background is not a class of the pseudo-labels


def test_default_pool_is_test_set_and_held_out_images_never_masks(tiny_npz, tmp_path):
    cfg = tiny_config(tiny_npz)
    prepared = prepare_data(cfg.data)
    pool = unlabeled_images(cfg, prepared)
    split, data = prepared.split, prepared.data
    assert len(pool) == len(split.val) + len(split.test) + len(data.test_images)
    assert np.array_equal(pool[: len(split.val)], data.images[split.val])
    assert np.array_equal(pool[-len(data.test_images) :], data.test_images)
    train_keys = {image.tobytes() for image in data.images[split.train]}
    assert not any(image.tobytes() in train_keys for image in pool[: len(split.val) + len(split.test)])
    other = load_config(None, overrides={"data.path": str(tiny_npz), "data.unlabeled": str(tiny_npz)})
    assert len(unlabeled_images(other, prepared)) == len(np.load(tiny_npz)["training_set"]) + len(data.test_images)


def test_training_step_adds_the_weighted_unlabeled_loss_in_one_forward_pass():
    torch.manual_seed(0)
    model = nn.Conv2d(1, 5, 3, padding=1)  # no batch norm: the joint pass equals two separate ones
    images, masks = torch.randn(4, 1, 8, 8), torch.randint(1, 5, (4, 8, 8))
    strong, targets = torch.randn(3, 1, 8, 8), torch.randint(1, 5, (3, 8, 8))
    targets[0] = IGNORED
    loss_fn = build_loss(load_config().loss, masks.numpy())
    expected = compute_loss(loss_fn, model(images), masks) + 0.5 * pseudo_label_loss(model(strong), targets)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    loss = training_step(model, images, masks, loss_fn, optimizer, unlabeled=PseudoLabeled(strong, targets, 0.5))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    plain = training_step(model, images, masks, loss_fn, optimizer)
    assert plain.item() == pytest.approx(compute_loss(loss_fn, model(images), masks).item(), rel=1e-5)


def test_semi_supervised_run_trains_on_the_pool_and_repeats_from_its_seed(tiny_npz, tmp_path):
    # threshold 0: every pixel is pseudo-labeled (a few steps' EMA is nowhere near a real threshold)
    semi = {"semi.weight": 1.0, "semi.threshold": 0.0, "semi.rare_threshold": 0.0, "semi.batch_size": 8}
    semi.update(precision="fp32", **ON_CPU)
    first = fit(tiny_config(tiny_npz, **semi), tmp_path / "a")
    second = fit(tiny_config(tiny_npz, **semi), tmp_path / "b")
    unsure = fit(tiny_config(tiny_npz, **{**semi, "semi.threshold": 1.0, "semi.rare_threshold": 1.0}), tmp_path / "c")
    losses = [[row["train_loss"] for row in run.history] for run in (first, second, unsure)]
    assert losses[0] == losses[1]  # reproducible from the seed, unlabeled draws included
    # the same unlabeled crops in the forward pass, but no pixel kept: the pseudo-label loss is what differs
    assert losses[0] != losses[2]
    saved = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert 0 <= saved["test_miou"] <= 1


def test_each_member_of_an_ensemble_run_trains_semi_supervised_as_a_run_of_its_own(tiny_npz, tmp_path):
    semi = {"semi.weight": 1.0, "semi.threshold": 0.0, "semi.rare_threshold": 0.0, "semi.batch_size": 8}
    semi.update(precision="fp32", **ON_CPU)
    alone = fit(tiny_config(tiny_npz, **semi, seed=1), tmp_path / "alone")
    ensemble = fit(tiny_config(tiny_npz, **semi, **{"model.members": 2}), tmp_path / "vote")
    second = ensemble.members[1]
    assert load_model(second.run_dir)[1].semi.weight == 1.0
    assert [r["train_loss"] for r in second.history] == [r["train_loss"] for r in alone.history]  # seed 0 + 1
    assert 0 <= json.loads((tmp_path / "vote" / "metrics.json").read_text())["test_miou"] <= 1


def test_semi_settings_are_checked(tiny_npz):
    for field, value in (("semi.weight", -1.0), ("semi.threshold", 1.5), ("semi.batch_size", 0)):
        with pytest.raises(ConfigError, match=field):
            load_config(None, overrides={field: value})


def test_train_flags_set_the_semi_fields_and_a_bad_pool_is_one_line_before_any_file(tmp_path, tiny_npz, capsys):
    from marsseg.cli import main, parse_overrides

    run = tmp_path / "run"
    args = ["train", "--data", str(tiny_npz), "--out", str(run), "--semi", "0.5", "--unlabeled", str(tmp_path / "x")]
    assert main(args) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "x: file not found" in error
    assert not run.exists() or not any(run.iterdir())
    from marsseg.cli import build_parser

    parsed = build_parser().parse_args(["train", "--out", "r", "--semi", "0.5", "--unlabeled", "u.npz"])
    assert parse_overrides(parsed) == {"semi.weight": 0.5, "data.unlabeled": "u.npz"}


def test_an_interrupted_semi_run_resumes_to_the_uninterrupted_one(tiny_npz, tmp_path):
    semi = {
        "semi.weight": 1.0,
        "semi.threshold": 0.5,
        "semi.batch_size": 8,
        "precision": "fp32",
        "optim.epochs": 3,
        **ON_CPU,
    }
    whole = fit(tiny_config(tiny_npz, **semi), tmp_path / "whole")

    class Interrupted(Exception):
        pass

    def stop_after_first(epoch, miou):
        if epoch == 0:
            raise Interrupted

    with pytest.raises(Interrupted):
        fit(tiny_config(tiny_npz, **semi), tmp_path / "cut", on_epoch=stop_after_first)
    resumed = fit(tiny_config(tiny_npz, **semi), tmp_path / "cut", resume=True)
    assert [row["train_loss"] for row in resumed.history] == [row["train_loss"] for row in whole.history]


def test_confident_labels_judge_confidence_among_the_scored_classes_only():
    probabilities = torch.tensor(
        [
            [0.50, 0.45, 0.03, 0.01, 0.01],  # half background; soil is 0.9 of the scored mass: kept
            [0.00, 0.85, 0.10, 0.05, 0.00],  # soil 0.85: ignored
            [0.30, 0.07, 0.07, 0.00, 0.56],  # big rock 0.8 of the scored mass: kept at the rare threshold 0.7
        ]
    ).T[None, :, None, :]  # (1, 5, 1, 3)
    assert confident_labels(probabilities[:, 1:], 0.9, 0.7).tolist() == [[[1, IGNORED, 4]]]


def test_label_pool_averages_teachers_each_with_its_big_rock_scale(trained_run, tiny_npz, tmp_path):
    images = np.load(tiny_npz)["test_set"][:40]
    model, cfg = load_model(trained_run)
    assert cfg.big_rock_scale == 3
    probabilities = torch.cat(list(predict_probabilities(model, images, settings=inference_settings(cfg))))

    def scored_share(scale: float) -> torch.Tensor:
        scored = scale_big_rock(probabilities, scale)[:, 1:]
        return scored / scored.sum(dim=1, keepdim=True)

    one = label_pool([str(trained_run)], images, 0.6, 0.4, "cpu", progress=False)
    assert one.dtype == torch.int8 and one.shape == (len(images), 64, 128)
    assert torch.equal(one.long(), confident_labels(scored_share(3.0), 0.6, 0.4))
    assert (one == 4).any() and (one == IGNORED).any() and (one != IGNORED).any()
    unscaled = confident_labels(scored_share(1.0), 0.6, 0.4)
    assert (one == 4).sum() > (unscaled == 4).sum()  # the teacher's scale is how it calls big rock
    # the same weights with scale 1: an ensemble of two teachers averages their shares of classes 1..4
    other = tmp_path / "unscaled_teacher"
    shutil.copytree(trained_run, other)
    state = torch.load(other / "best.pt", weights_only=True)
    state["config"]["big_rock_scale"] = 1.0
    torch.save(state, other / "best.pt")
    two = label_pool([str(trained_run), str(other)], images, 0.6, 0.4, "cpu", progress=False)
    expected = confident_labels((scored_share(3.0) + scored_share(1.0)) / 2, 0.6, 0.4)
    assert torch.equal(two.long(), expected)
    assert not torch.equal(two, one) and not torch.equal(two.long(), unscaled)


def test_a_labelled_pool_gives_each_drawn_crop_its_own_labels_flipped_with_it(tiny_npz, monkeypatch):
    monkeypatch.setattr(semi_module, "strong_view", lambda images, targets, generator: (images, targets))
    rng = np.random.default_rng(0)
    labels = torch.from_numpy(rng.integers(1, 5, (6, 64, 128))).to(torch.int8)
    labels[:, :, :64] = IGNORED  # the left half unsure: a flip moves it to the right
    images = ((labels.numpy().astype(np.int16) + 1) * 50).astype(np.uint8)  # each pixel shows its label
    cfg = tiny_config(tiny_npz, **{"semi.weight": 1.0, "semi.batch_size": 16})
    stream = UnlabeledStream(cfg, images, "cpu", labels=labels)
    batch = stream.next_batch(teacher=None)
    shown = torch.round(batch.images[:, 0] * 127.5 + 127.5).long()  # back to gray values
    assert torch.equal(batch.targets, shown // 50 - 1)
    left_unsure = (batch.targets[:, :, :64] == IGNORED).all(dim=(1, 2))
    assert 0 < left_unsure.sum() < 16  # some crops flipped, some not


def test_recipe_pseudo_loss_is_the_labeled_loss_with_unsure_pixels_as_background():
    torch.manual_seed(0)
    model = nn.Conv2d(1, 5, 3, padding=1)
    images, masks = torch.randn(4, 1, 8, 8), torch.randint(1, 5, (4, 8, 8))
    strong, targets = torch.randn(3, 1, 8, 8), torch.randint(1, 5, (3, 8, 8))
    targets[0, :4] = IGNORED
    loss_fn = build_loss(load_config().loss, masks.numpy())
    as_background = targets.clamp(min=0)
    expected = compute_loss(loss_fn, model(images), masks) + 2.0 * compute_loss(loss_fn, model(strong), as_background)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    pseudo = PseudoLabeled(strong, targets, 2.0, loss="recipe")
    loss = training_step(model, images, masks, loss_fn, optimizer, unlabeled=pseudo)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    other = targets.clone()
    other[0, :4] = 2  # what an unsure pixel would have been does not matter ...
    same = compute_loss(loss_fn, model(strong), other.masked_fill(targets == IGNORED, 0))
    assert same.item() == pytest.approx(compute_loss(loss_fn, model(strong), as_background).item(), rel=1e-6)
    assert compute_loss(loss_fn, model(strong), other).item() != pytest.approx(
        same.item(), rel=1e-3
    )  # ... unless scored


def test_offline_self_training_repeats_from_its_seed_and_its_pseudo_labels_change_what_it_learns(
    trained_run, tiny_npz, tmp_path
):
    student = {"semi.weight": 1.0, "semi.teachers": [str(trained_run)], "semi.loss": "recipe", "semi.batch_size": 8}
    student.update({"precision": "fp32", "semi.threshold": 0.5, "semi.rare_threshold": 0.5, **ON_CPU})
    first = fit(tiny_config(tiny_npz, **student), tmp_path / "a")
    second = fit(tiny_config(tiny_npz, **student), tmp_path / "b")
    unsure = fit(
        tiny_config(tiny_npz, **{**student, "semi.threshold": 1.0, "semi.rare_threshold": 1.0}), tmp_path / "c"
    )
    losses = [[row["train_loss"] for row in run.history] for run in (first, second, unsure)]
    assert losses[0] == losses[1]
    assert losses[0] != losses[2]


def test_teacher_settings_and_flag(tmp_path, tiny_npz, capsys):
    from marsseg.cli import build_parser, main, parse_overrides

    with pytest.raises(ConfigError, match="semi.loss"):
        load_config(None, overrides={"semi.loss": "dice"})
    with pytest.raises(ConfigError, match="needs loss.ignore_background"):
        load_config(None, overrides={"semi.loss": "recipe", "loss.ignore_background": False})
    with pytest.raises(ConfigError, match="semi.teachers' needs semi.weight > 0"):
        load_config(None, overrides={"semi.teachers": ["a"]})
    parsed = build_parser().parse_args(["train", "--out", "r", "--teacher", "a", "--teacher", "b", "--semi", "0.5"])
    assert parse_overrides(parsed) == {"semi.teachers": ["a", "b"], "semi.weight": 0.5}
    run = tmp_path / "run"
    flags = ["train", "--data", str(tiny_npz), "--out", str(run), "--semi", "1"]
    assert main([*flags, "--teacher", str(tmp_path / "none")]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and str(tmp_path / "none") in error and "not found" in error
    assert not run.exists()


def test_a_teacher_that_saw_the_runs_held_out_crops_is_refused_before_any_file(trained_run, tiny_npz, capsys):
    from marsseg.cli import main
    from marsseg.data.prepare import prepare_data
    from marsseg.errors import UserError
    from marsseg.teachers import check_teachers

    same_split = prepare_data(load_config(str(trained_run / "config.yaml")).data)
    check_teachers([str(trained_run)], same_split)  # the teacher's own split: nothing held out was trained on
    other_split = prepare_data(tiny_config(tiny_npz, **{"data.split_seed": 1}).data)
    with pytest.raises(UserError, match="trained on [0-9]+ of this run's validation and local-test crops"):
        check_teachers([str(trained_run)], other_split)
    run = trained_run.parent / "leaky_student"
    flags = ["--semi", "1", "--teacher", str(trained_run), "--set", "data.split_seed=1"]
    assert main(["train", "--data", str(tiny_npz), "--out", str(run), *flags]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "validation and local-test crops" in error
    assert not run.exists()


# Distillation through soft targets (semi.loss "soft"): the teachers' probabilities of classes 1..4, no threshold.


def test_soft_target_loss_is_the_kl_divergence_from_the_teachers_probabilities():
    logits = torch.randn(2, 5, 3, 4)
    hard = torch.randint(1, 5, (2, 3, 4))
    one_hot = F.one_hot(hard - 1, 4).permute(0, 3, 1, 2).float()
    # one-hot targets: the plain cross-entropy over classes 1..4, averaged over pixels
    expected = F.cross_entropy(logits[:, 1:], hard - 1)
    assert soft_target_loss(logits, one_hot).item() == pytest.approx(expected.item(), rel=1e-6)
    teacher = torch.randn(2, 4, 3, 4).softmax(dim=1)
    agreeing = torch.cat([torch.full((2, 1, 3, 4), 9.0), teacher.log()], dim=1)  # background's logit plays no part
    assert soft_target_loss(agreeing, teacher).item() == pytest.approx(0.0, abs=1e-6)
    student = logits[:, 1:].log_softmax(dim=1)
    kl = (teacher * (teacher.log() - student)).sum(dim=1).mean()
    assert soft_target_loss(logits, teacher).item() == pytest.approx(kl.item(), rel=1e-5) and kl.item() > 0.1
    logits.requires_grad_(True)
    soft_target_loss(logits, teacher).backward()
    assert (logits.grad[:, 0] == 0).all()
    with pytest.raises(ValueError, match="soft targets: found shape"):
        soft_target_loss(logits, hard)  # labels where probabilities belong: refused, not broadcast
    # in the training step: the labeled loss plus the weighted soft-target loss, one forward pass
    torch.manual_seed(0)
    model = nn.Conv2d(1, 5, 3, padding=1)
    images, masks, strong = torch.randn(4, 1, 3, 4), torch.randint(1, 5, (4, 3, 4)), torch.randn(2, 1, 3, 4)
    loss_fn = build_loss(load_config().loss, masks.numpy())
    expected = compute_loss(loss_fn, model(images), masks) + 0.5 * soft_target_loss(model(strong), teacher)
    pseudo = PseudoLabeled(strong, teacher, 0.5, loss="soft")
    loss = training_step(model, images, masks, loss_fn, torch.optim.SGD(model.parameters(), lr=0.0), unlabeled=pseudo)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_strong_view_moves_soft_targets_with_their_pixels_as_it_moves_labels():
    batch = 32
    labels = torch.arange(1, 5).repeat(batch // 4)[:, None, None].expand(batch, 16, 32).clone()
    soft = F.one_hot(labels - 1, 4).permute(0, 3, 1, 2).float() * 0.7 + 0.075  # the label's class at 0.775
    images = labels[:, None].float() / 4
    views, moved_labels = strong_view(images, labels, torch.Generator().manual_seed(3))
    same_views, moved_soft = strong_view(images, soft, torch.Generator().manual_seed(3))
    assert torch.equal(views, same_views)  # the same draws whatever the targets' shape
    assert moved_soft.shape == soft.shape and not torch.equal(moved_soft, soft)  # CutMix moved some
    assert torch.equal(moved_soft.argmax(dim=1) + 1, moved_labels)
    assert torch.allclose(moved_soft.sum(dim=1), torch.ones(batch, 16, 32))


def test_a_soft_labelled_pool_averages_the_teachers_unscaled_probabilities_and_is_flipped_with_its_crops(
    trained_run, tiny_npz, tmp_path, monkeypatch
):
    images = np.load(tiny_npz)["test_set"][:24]
    other = tmp_path / "other_teacher"  # the same run with its convolutions perturbed: another teacher
    shutil.copytree(trained_run, other)
    state = torch.load(other / "best.pt", weights_only=True)
    generator = torch.Generator().manual_seed(0)
    for value in state["model"].values():
        if value.dim() == 4:
            value.add_(torch.randn(value.shape, generator=generator) * 0.1 * value.std())
    torch.save(state, other / "best.pt")

    def shares(run) -> torch.Tensor:  # the teacher's probabilities of classes 1..4, at big-rock scale 1
        model, cfg = load_model(run)
        probabilities = torch.cat(list(predict_probabilities(model, images, settings=inference_settings(cfg))))[:, 1:]
        return probabilities / probabilities.sum(dim=1, keepdim=True)

    assert load_model(trained_run)[1].big_rock_scale == 3  # left out: chosen for an argmax, not as a probability
    mine, theirs = shares(trained_run), shares(other)
    assert (mine - theirs).abs().max() > 0.05
    soft = label_pool([str(trained_run), str(other)], images, 0.9, 0.7, "cpu", progress=False, soft=True)
    assert soft.dtype == torch.float16 and soft.shape == (len(images), 4, 64, 128)
    torch.testing.assert_close(soft.float(), (mine + theirs) / 2, atol=1e-3, rtol=0)  # float16: about three digits
    # drawn from the stream: each crop's probabilities, flipped left-right with it
    monkeypatch.setattr(semi_module, "strong_view", lambda images, targets, generator: (images, targets))
    soft_semi = {"semi.weight": 1.0, "semi.batch_size": 16, "semi.loss": "soft", "semi.teachers": [str(other)]}
    stream_cfg = tiny_config(tiny_npz, **soft_semi)
    stream = UnlabeledStream(stream_cfg, images, "cpu", labels=soft)
    batch = stream.next_batch(teacher=None)
    assert batch.loss == "soft" and batch.targets.dtype == torch.float32
    flips = 0
    for view, target in zip(batch.images[:, 0], batch.targets, strict=True):
        shown = torch.round(view * 127.5 + 127.5).to(torch.uint8).numpy()
        crop, flipped = next(
            (k, f)
            for k in range(len(images))
            for f in (False, True)
            if np.array_equal(images[k], shown[:, ::-1] if f else shown)
        )
        flips += flipped
        assert torch.equal(target, soft[crop].float().flip(-1) if flipped else soft[crop].float())
    assert 0 < flips < len(batch.targets)


def test_a_soft_student_learns_the_teachers_probabilities_whatever_the_thresholds(trained_run, tiny_npz, tmp_path):
    student = {"semi.weight": 1.0, "semi.teachers": [str(trained_run)], "semi.loss": "soft", "semi.batch_size": 8}
    student.update(precision="fp32", **ON_CPU)
    first = fit(tiny_config(tiny_npz, **student), tmp_path / "a")
    strict = fit(
        tiny_config(tiny_npz, **{**student, "semi.threshold": 1.0, "semi.rare_threshold": 1.0}), tmp_path / "b"
    )
    labels = fit(tiny_config(tiny_npz, **{**student, "semi.loss": "cross_entropy"}), tmp_path / "c")
    losses = [[row["train_loss"] for row in run.history] for run in (first, strict, labels)]
    assert losses[0] == losses[1]  # no pixel is left out by a threshold: the same run
    assert all(np.isfinite(losses[0])) and losses[0] != losses[2]
    with pytest.raises(ConfigError, match="'soft' needs semi.teachers"):
        load_config(None, overrides={"semi.weight": 1.0, "semi.loss": "soft"})  # online (the EMA as teacher): not built
