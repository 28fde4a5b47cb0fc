"""The shared training loop: batched augmentation on the device, schedules, early stopping, extra
optimisers, per-example losses, frozen normalisation, evaluation and checkpoints."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from backdoorlab.models import ARCHITECTURES, Classifier, new_model
from backdoorlab.runtime import Runtime
from backdoorlab.storage import load_checkpoint, save_checkpoint
from backdoorlab.training import (TrainOptions, accuracy_and_loss, augment, cross_entropy, fit, per_example_losses,
                                  predict, scheduler, sgd, smoothed_cross_entropy, train_epoch)

CPU = Runtime(torch.device("cpu"), channels_last=False)


def options(**changes) -> TrainOptions:
    return TrainOptions(**{"epochs": 1, "lr": 0.05, "batch_size": 32, "augment": "none", **changes})


def rule_data(n=256, seed=0):
    """8x8 grey images; class 1 has a bright top half."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 60, size=(n, 8, 8, 1), dtype=np.uint8)
    y = rng.integers(0, 2, size=n)
    x[y == 1, :4] += 150
    return x, y


# ------------------------------------------------------------------ augmentation

def test_crop_shifts_whole_images_and_pads_with_zeros():
    x = torch.arange(1, 65, dtype=torch.uint8).view(1, 8, 8, 1).repeat(64, 1, 1, 1)
    gen = torch.Generator().manual_seed(0)
    out = augment(x, "crop", gen, pad=2)
    assert out.shape == x.shape and out.dtype == torch.uint8
    for image in out[:, :, :, 0]:
        nonzero = image[image > 0]
        # a shifted copy: consecutive values along a row stay consecutive
        rows = [r[r > 0] for r in image if (r > 0).any()]
        assert all((torch.diff(r.int()) == 1).all() for r in rows)
        assert len(nonzero) >= 36  # at most 2 rows and 2 columns lost
    assert len({tuple(o.flatten().tolist()) for o in out}) > 5  # different shifts per image


def test_flip_mirrors_about_half_the_batch_and_none_keeps_images():
    x = torch.arange(16, dtype=torch.uint8).view(1, 4, 4, 1).repeat(200, 1, 1, 1)
    gen = torch.Generator().manual_seed(0)
    out = augment(x, "crop_flip", gen, pad=0)
    flipped = (out == x.flip(2)).all(dim=(1, 2, 3))
    assert 60 < flipped.sum() < 140
    assert ((out == x).all(dim=(1, 2, 3)) | flipped).all()
    assert torch.equal(augment(x, "none", gen), x)


def test_flip_alone_mirrors_about_half_the_batch_and_shifts_nothing():
    x = torch.arange(16, dtype=torch.uint8).view(1, 4, 4, 1).repeat(200, 1, 1, 1)
    out = augment(x, "flip", torch.Generator().manual_seed(0))
    flipped = (out == x.flip(2)).all(dim=(1, 2, 3))
    assert 60 < flipped.sum() < 140
    assert ((out == x).all(dim=(1, 2, 3)) | flipped).all()  # every image is itself or its mirror image


# ------------------------------------------------------------------ options and schedules

def epoch_lrs(opts: TrainOptions, epochs: int) -> list[float]:
    """The lr each epoch trains at, stepping the scheduler once per epoch as fit does."""
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=opts.lr)
    schedule = scheduler(optimizer, opts)
    lrs = []
    for _ in range(epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return lrs


def test_cosine_schedule_starts_at_the_lr_and_halves_it_midway():
    lrs = epoch_lrs(TrainOptions(epochs=10, lr=0.1, schedule="cosine"), 10)
    assert lrs[0] == pytest.approx(0.1)
    assert lrs[5] == pytest.approx(0.05)
    assert all(a > b for a, b in zip(lrs, lrs[1:]))  # strictly falling towards zero


def test_step_schedule_divides_the_lr_by_ten_at_each_milestone():
    lrs = epoch_lrs(TrainOptions(epochs=60, lr=0.1, schedule="step", milestones=(40, 50)), 60)
    assert [lrs[e] for e in (0, 39, 40, 50)] == pytest.approx([0.1, 0.1, 0.01, 0.001])


def test_constant_schedule_keeps_the_lr():
    assert epoch_lrs(TrainOptions(epochs=10, lr=0.1, schedule="constant"), 10) == pytest.approx([0.1] * 10)


def test_options_come_from_the_train_params_with_the_stage_seed_and_changes_on_top():
    p = {"train.arch": "convnet", "train.epochs": 7, "train.lr": 0.2, "train.batch_size": 16,
         "train.schedule": "step", "train.milestones": [3, 5], "train.momentum": 0.8,
         "train.weight_decay": 0.0, "train.augment": "crop", "train.precision": "fp32",
         "train.threads": 0, "train.label_smoothing": 0.1}
    opts = TrainOptions.from_params(p, seed=4, lr=0.01)
    assert opts == TrainOptions(epochs=7, lr=0.01, batch_size=16, schedule="step", milestones=(3, 5),
                                momentum=0.8, weight_decay=0.0, augment="crop", label_smoothing=0.1, seed=4)
    assert opts.replace(epochs=2).epochs == 2 and opts.epochs == 7  # frozen: replace gives a copy
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.lr = 1.0


# ------------------------------------------------------------------ fit

@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_architecture_maps_images_of_any_size_to_class_scores(arch):
    model = Classifier(arch, in_channels=1, num_classes=7)
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 7)


def test_training_learns_a_simple_rule_and_checkpoints_reload_with_weights_only(tmp_path):
    x, y = rule_data()
    model = CPU.prepare(new_model("convnet", x, 2, seed=0))
    xt, yt = CPU.tensors(x, y)
    before = accuracy_and_loss(model, xt, yt, CPU)
    epochs = []
    fit(model, xt, yt, CPU, options(epochs=4), on_epoch=lambda e, s: epochs.append((e, s)))
    after = accuracy_and_loss(model, xt, yt, CPU)
    assert after["loss"] < before["loss"] and after["acc"] > 0.95
    assert [e for e, _ in epochs] == [0, 1, 2, 3]
    assert [sorted(s) for _, s in epochs] == [["lr", "train_acc", "train_loss"]] * 4

    save_checkpoint(tmp_path / "m.pt", model.checkpoint(trained_on="test"))
    state = load_checkpoint(tmp_path / "m.pt")
    again = Classifier.from_checkpoint(state)
    assert state["meta"] == {"trained_on": "test"}
    assert accuracy_and_loss(again, xt, yt, CPU)["loss"] == pytest.approx(after["loss"], rel=1e-5)


def test_on_epoch_sees_the_lr_each_epoch_trained_at():
    x, y = rule_data(64)  # two batches an epoch: the schedule steps per epoch, not per batch
    xt, yt = CPU.tensors(x, y)
    opts = options(epochs=4, lr=0.1, schedule="step", milestones=(2,))
    seen = []
    fit(new_model("convnet", x, 2, seed=0), xt, yt, CPU, opts, on_epoch=lambda e, s: seen.append(s["lr"]))
    assert seen == pytest.approx([0.1, 0.1, 0.01, 0.01])


def test_on_epoch_returning_true_stops_training_after_that_epoch():
    x, y = rule_data(64)
    xt, yt = CPU.tensors(x, y)
    seen = []

    def stop_after_second(epoch, stats):
        seen.append(epoch)
        return epoch == 1

    model = new_model("convnet", x, 2, seed=0)
    fit(model, xt, yt, CPU, options(epochs=10), on_epoch=stop_after_second)
    assert seen == [0, 1]
    # a callback returning None (most of them) does not stop anything
    seen.clear()
    fit(model, xt, yt, CPU, options(epochs=3), on_epoch=lambda e, s: seen.append(e))
    assert seen == [0, 1, 2]


class CountingAdam(torch.optim.Adam):
    def __init__(self, params, lr):
        super().__init__(params, lr=lr)
        self.steps = self.zero_grads = 0

    def step(self, closure=None):
        self.steps += 1
        return super().step(closure)

    def zero_grad(self, set_to_none: bool = True):
        self.zero_grads += 1
        super().zero_grad(set_to_none)


def test_extra_optimizers_step_their_own_parameters_alongside_the_model_every_batch():
    x, y = rule_data(64)
    xt, yt = CPU.tensors(x, y)
    shift = nn.Parameter(torch.zeros(()))  # trained through the batch transform, not part of the model

    def shifted(xb, yb):
        return xb + shift, yb, None

    model = new_model("convnet", x, 2, seed=0)
    fit(model, xt, yt, CPU, options(epochs=2), batch_transform=shifted)
    assert shift.item() == 0.0  # without an optimiser of its own it never moves

    extra = CountingAdam([shift], lr=0.01)
    fit(model, xt, yt, CPU, options(epochs=2), batch_transform=shifted, extra_optimizers=[extra])
    assert extra.steps == extra.zero_grads == 2 * 2  # two epochs of two 32-image batches
    assert shift.item() != 0.0


# ------------------------------------------------------------------ one epoch

def test_train_epoch_records_each_examples_loss_as_training_sees_it():
    x, y = rule_data(50)
    xt, yt = CPU.tensors(x, y)
    model = CPU.prepare(new_model("convnet", x, 2, seed=0))
    opts = options(lr=1e-9, momentum=0.0, weight_decay=0.0)  # the model barely changes within the epoch
    seen = torch.full((50,), -1.0)
    train_epoch(model, xt, yt, sgd(model, opts), CPU, opts, torch.Generator().manual_seed(0),
                example_losses=seen, frozen_norm=True)
    assert (seen >= 0).all()  # every example recorded, in its own place despite the shuffled order
    assert seen.tolist() == pytest.approx(per_example_losses(model, xt, yt, CPU).tolist(), rel=1e-4, abs=1e-6)


def batch_norm_statistics(model: nn.Module) -> list[torch.Tensor]:
    return [m.running_mean.clone() for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


@pytest.mark.parametrize("frozen", [True, False])
def test_frozen_norm_leaves_batch_norm_statistics_alone(frozen):
    x, y = rule_data(64)
    xt, yt = CPU.tensors(x, y)
    model = CPU.prepare(new_model("convnet", x, 2, seed=0))
    opts = options()
    before = batch_norm_statistics(model)
    train_epoch(model, xt, yt, sgd(model, opts), CPU, opts, torch.Generator().manual_seed(0), frozen_norm=frozen)
    unchanged = all(torch.equal(a, b) for a, b in zip(before, batch_norm_statistics(model)))
    assert unchanged is frozen


def test_a_diverging_loss_stops_training_with_a_clear_error():
    x = np.zeros((8, 8, 8, 1), dtype=np.uint8)
    y = np.zeros(8, dtype=np.int64)
    model = new_model("convnet", x, 2, seed=0)
    xt, yt = CPU.tensors(x, y)

    def nan_loss(logits, labels, weight):
        return logits.sum() * float("nan")

    with pytest.raises(FloatingPointError, match="loss became nan"):
        fit(model, xt, yt, CPU, options(lr=0.1), loss_fn=nan_loss)


def test_models_normalise_with_the_training_set_statistics():
    x = np.full((4, 8, 8, 3), [51, 102, 204], dtype=np.uint8)
    model = new_model("convnet", x, 2, seed=0)
    assert model.mean.flatten().tolist() == pytest.approx([0.2, 0.4, 0.8])


# ------------------------------------------------------------------ label smoothing

def test_label_smoothing_spreads_its_share_of_the_target_over_every_class():
    logits, y, weight = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([0]), torch.tensor([0.5])
    log_p = torch.log_softmax(logits, 1)[0]
    # share 0.3 over 3 classes: 0.7 + 0.1 on the label, 0.1 on each other class
    expected = -(0.8 * log_p[0] + 0.1 * log_p[1] + 0.1 * log_p[2]) * 0.5
    assert smoothed_cross_entropy(0.3)(logits, y, weight).item() == pytest.approx(expected.item())
    assert smoothed_cross_entropy(0.0) is cross_entropy  # no smoothing: the plain loss, as before


def test_training_without_smoothing_is_unchanged_and_with_it_the_model_is_less_sure():
    x, y = rule_data()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    def trained(loss_fn=None, **changes):
        model = new_model("convnet", x, 2, seed=0)
        fit(model, xt, yt, CPU, options(epochs=4, lr=0.1, **changes), loss_fn=loss_fn)
        return model

    plain, explicit, smoothed = trained(), trained(loss_fn=cross_entropy), trained(label_smoothing=0.4)
    for a, b in zip(plain.state_dict().values(), explicit.state_dict().values()):
        assert torch.equal(a, b)
    sure = lambda model: torch.softmax(predict(model, xt, CPU), 1).max(1).values.mean()  # noqa: E731
    assert accuracy_and_loss(smoothed, xt, yt, CPU)["acc"] > 0.9  # it still learns the rule
    assert sure(smoothed) < sure(plain) - 0.05
