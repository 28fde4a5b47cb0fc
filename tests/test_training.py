"""The shared training loop: batched augmentation on the device, learning, evaluation, checkpoints."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from backdoorlab.models import ARCHITECTURES, Classifier
from backdoorlab.pipeline import new_model
from backdoorlab.storage import load_checkpoint, save_checkpoint
from backdoorlab.training import Runtime, TrainingConfig, accuracy_and_loss, augment, fit, lr_at

CPU = Runtime(torch.device("cpu"))


def config(**changes) -> TrainingConfig:
    base = dict(arch="convnet", batch_size=32, momentum=0.9, weight_decay=5e-4, augment="none",
                precision="fp32", seed=0)
    return TrainingConfig(**{**base, **changes})


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


def test_learning_rate_schedules():
    assert lr_at(0, 10, 0.1, "cosine", []) == pytest.approx(0.1)
    assert lr_at(5, 10, 0.1, "cosine", []) == pytest.approx(0.05)
    assert [lr_at(e, 60, 0.1, "step", [40, 50]) for e in (0, 39, 40, 50)] == pytest.approx([0.1, 0.1, 0.01, 0.001])
    assert lr_at(7, 10, 0.1, "constant", []) == 0.1


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_architecture_maps_images_of_any_size_to_class_scores(arch):
    model = Classifier(arch, in_channels=1, num_classes=7)
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 7)


def test_training_learns_a_simple_rule_and_checkpoints_reload_with_weights_only(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 60, size=(256, 8, 8, 1), dtype=np.uint8)
    y = rng.integers(0, 2, size=256)
    x[y == 1, :4] += 150  # class 1: bright top half
    cfg = config()
    model = CPU.prepare(new_model("convnet", x, 2, seed=0))
    xt, yt = CPU.tensors(x, y)
    before = accuracy_and_loss(model, xt, yt, CPU)
    epochs = []
    fit(model, xt, yt, CPU, cfg, epochs=4, lr=0.05, on_epoch=lambda e, s: epochs.append(s))
    after = accuracy_and_loss(model, xt, yt, CPU)
    assert after["loss"] < before["loss"] and after["acc"] > 0.95
    assert [sorted(s) for s in epochs] == [["lr", "train_acc", "train_loss"]] * 4

    save_checkpoint(tmp_path / "m.pt", model.checkpoint(trained_on="test"))
    state = load_checkpoint(tmp_path / "m.pt")
    again = Classifier.from_checkpoint(state)
    assert state["meta"] == {"trained_on": "test"}
    assert accuracy_and_loss(again, xt, yt, CPU)["loss"] == pytest.approx(after["loss"], rel=1e-5)


def test_a_diverging_loss_stops_training_with_a_clear_error():
    x = np.zeros((8, 8, 8, 1), dtype=np.uint8)
    y = np.zeros(8, dtype=np.int64)
    model = new_model("convnet", x, 2, seed=0)
    xt, yt = CPU.tensors(x, y)

    def nan_loss(logits, labels, weight):
        return logits.sum() * float("nan")

    with pytest.raises(FloatingPointError, match="loss became nan"):
        fit(model, xt, yt, CPU, config(), epochs=1, lr=0.1, loss_fn=nan_loss)


def test_models_normalise_with_the_training_set_statistics():
    x = np.full((4, 8, 8, 3), [51, 102, 204], dtype=np.uint8)
    model = new_model("convnet", x, 2, seed=0)
    assert model.mean.flatten().tolist() == pytest.approx([0.2, 0.4, 0.8])
