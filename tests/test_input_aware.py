"""Input-aware attack: input-specific triggers, the mask norm loss, the NaN guard, relabelled poisons."""
from __future__ import annotations

import copy
import functools

import numpy as np
import pytest
import torch

from backdoorlab.attacks.input_aware import AttackerTraining, InputAware, TriggerNets, diversity
from backdoorlab.models import new_model
from backdoorlab.runtime import Runtime
from backdoorlab.training import TrainOptions, fit

CPU = Runtime(torch.device("cpu"))


def images(n=16, size=16, channels=3, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).random((n, channels, size, size), dtype=np.float32))


@functools.cache
def trained_nets(steps=30):
    """Trigger nets after a few steps of the diversity and mask-norm losses alone (shared: do not train them)."""
    torch.manual_seed(0)
    nets = TriggerNets(3).train()
    optimizer = torch.optim.Adam(nets.parameters(), lr=0.01)
    training = AttackerTraining(nets, target=0, p_attack=0.5, p_cross=0.25, lambda_div=1.0,
                                mask_density=0.1, lambda_norm=100.0)
    for _ in range(steps):
        _, _, extra = training(images(), torch.zeros(16, dtype=torch.long))
        optimizer.zero_grad()
        extra.backward()
        optimizer.step()
    return nets.eval()


def test_generated_patterns_differ_between_inputs():
    nets = trained_nets()
    x = images(2)
    with torch.no_grad():
        patterns = nets.pattern(x)
    assert (patterns[0] - patterns[1]).abs().mean() > 0.01
    with torch.no_grad():
        assert diversity(x[:1], patterns[:1], x[1:], patterns[1:]) < 100


def test_the_mask_norm_loss_pulls_the_mean_mask_below_where_it_starts():
    untrained = trained_nets(0)
    nets = trained_nets()
    with torch.no_grad():
        start, after = untrained.mask(images(32, seed=1)).mean(), nets.mask(images(32, seed=1)).mean()
    assert start > 0.4  # a sigmoid of small outputs: about 0.5
    assert after < 0.3  # pushed towards mask_density (0.1)


def test_the_batch_transform_triggers_p_attack_relabelled_and_p_cross_with_true_labels():
    nets = trained_nets(1)
    training = AttackerTraining(nets, target=7, p_attack=0.25, p_cross=0.25, lambda_div=1.0,
                                mask_density=0.1, lambda_norm=1.0)
    x, y = images(8), torch.arange(8)
    inputs, labels, extra = training(x, y)
    assert labels.tolist() == [7, 7, 2, 3, 4, 5, 6, 7]
    assert torch.equal(inputs[4:], x[4:])
    assert not torch.equal(inputs[:4], x[:4])
    assert torch.isfinite(extra)


def test_cross_triggers_are_the_ones_the_nets_make_for_the_other_image_in_training_mode():
    # the batch transform makes each trigger once and reorders them for the cross share: batch normalisation's
    # statistics are the same for any order of the batch, so this equals running the nets on the other images
    nets = copy.deepcopy(trained_nets(1)).train()  # training mode updates its running statistics: a copy
    training = AttackerTraining(nets, target=7, p_attack=0.25, p_cross=0.5, lambda_div=1.0,
                                mask_density=0.1, lambda_norm=1.0)
    x, y = images(8), torch.arange(8)
    with torch.no_grad():
        inputs, _, _ = training(x, y)
        other = x[torch.roll(torch.arange(8), 4)]
        crossed = x + nets.mask(other) * (nets.pattern(other) - x)
    torch.testing.assert_close(inputs[2:6], crossed[2:6], atol=1e-5, rtol=1e-4)


def test_a_non_finite_loss_stops_attacker_training_naming_the_epoch():
    x = np.random.default_rng(0).integers(0, 256, (32, 16, 16, 3), dtype=np.uint8)
    y = np.arange(32) % 4
    classifier = new_model("convnet", x, 4, seed=0)
    nets = TriggerNets(3).train()
    opts = TrainOptions(epochs=3, lr=0.01, batch_size=16, weight_decay=0.0, augment="none")
    planted = AttackerTraining(nets, 0, 0.25, 0.25, lambda_div=1.0, mask_density=0.1,
                               lambda_norm=float("nan"))  # the planted non-finite term
    xt, yt = CPU.tensors(x, y)
    with pytest.raises(FloatingPointError, match=r"attacker 1/3: the loss became nan"):
        fit(classifier, xt, yt, CPU, opts, batch_transform=planted, desc="attacker",
            extra_optimizers=[torch.optim.Adam(nets.parameters(), lr=0.01)])


def test_poisoned_training_images_are_relabelled_to_the_target():
    attack = InputAware({"ia_rate": 0.2}, target=1, seed=0)
    attack.nets, attack.rt = trained_nets(1), CPU
    x = np.random.default_rng(0).integers(0, 256, (50, 16, 16, 3), dtype=np.uint8)
    y = np.arange(50) % 5
    sets = attack.make_sets(x, y, x, y)
    assert len(sets.poison_indices) == 10
    assert (sets.y_train[sets.poison_indices] == 1).all()
    assert (sets.y_train_true[sets.poison_indices] != 1).all()
    assert (sets.y_test == 1).all() and (sets.y_test_true != 1).all()
    assert not (sets.x_train[sets.poison_indices] == x[sets.poison_indices]).all()
