"""Clean-label attack: PGD stays in its eps-ball and the pixel range, raises the surrogate's loss,
and only target-class images change, labels untouched."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from backdoorlab.attacks.clean_label import CleanLabel, corner_trigger
from backdoorlab.pgd import pgd
from backdoorlab.models import new_model
from backdoorlab.runtime import Runtime
from backdoorlab.training import TrainOptions, fit

CPU = Runtime(torch.device("cpu"))


@pytest.fixture(scope="module")
def surrogate_and_data():
    """A small CNN trained for two epochs on real digits (scikit-learn), and those digits."""
    from backdoorlab.sources import load_source

    data = load_source("sklearn-digits", test_size=300)
    model = new_model("convnet", data.x_train, 10, seed=0)
    x, y = CPU.tensors(data.x_train, data.y_train)
    fit(model, x, y, CPU, TrainOptions(epochs=2, lr=0.05, batch_size=64, augment="none"))
    return model, data


@pytest.mark.parametrize("norm,eps", [("linf", 8 / 255), ("l2", 1.0)])
def test_pgd_stays_within_eps_and_the_pixel_range_and_raises_the_loss(surrogate_and_data, norm, eps):
    model, data = surrogate_and_data
    x, y = CPU.tensors(data.x_test[:64], data.y_test[:64])
    clean = CPU.model_input(x).contiguous()
    adv = pgd(model, clean, y, norm=norm, eps=eps, step=eps / 4, steps=10, random_start=True,
              generator=torch.Generator().manual_seed(0))
    delta = (adv - clean).flatten(1)
    size = delta.abs().max(dim=1).values if norm == "linf" else delta.norm(dim=1)
    assert (size <= eps + 1e-5).all()
    assert adv.min() >= 0 and adv.max() <= 1
    model.eval()
    with torch.no_grad():
        assert F.cross_entropy(model(adv), y) > F.cross_entropy(model(clean), y) + 0.1


def test_corner_trigger_moves_checker_pixels_by_the_amplitude_and_clips():
    images = np.full((1, 8, 8, 1), 100, dtype=np.uint8)
    out = corner_trigger(images, 16)[0, :, :, 0]
    assert out[:3, :3].tolist() == [[116, 84, 116], [84, 116, 84], [116, 84, 116]]
    assert (out[:3, -3:] == out[:3, :3]).all() and (out[-3:, :3] == out[:3, :3]).all()
    assert (out[3:5, :] == 100).all() and (out[:, 3:5] == 100).all()
    full = corner_trigger(images, 255)[0, :3, :3, 0]
    assert full.tolist() == [[255, 0, 255], [0, 255, 0], [255, 0, 255]]


def test_poisoning_perturbs_target_images_within_eps_then_stamps_the_trigger_keeping_labels(surrogate_and_data):
    model, data = surrogate_and_data
    knobs = {"cl_fraction": 0.5, "cl_norm": "linf", "cl_eps": 8, "cl_step": 2, "cl_steps": 5,
             "cl_random_start": False, "cl_amplitude": 255}
    attack = CleanLabel(knobs, target=3, seed=0)
    attack.rt, attack.surrogate = CPU, model  # what load_inputs reads from models/surrogate.pt
    x, y = data.x_train[:300], data.y_train[:300]
    sets = attack.make_sets(x, y, data.x_test, data.y_test)
    assert (sets.y_train == y).all()
    assert (y[sets.poison_indices] == 3).all()
    assert len(sets.poison_indices) == round(0.5 * (y == 3).sum())
    changed = np.flatnonzero((sets.x_train != x).any(axis=(1, 2, 3)))
    assert set(changed) <= set(sets.poison_indices)
    inner = (slice(None), slice(3, -3), slice(3, -3))  # away from the corner triggers: only PGD's change
    diff = np.abs(sets.x_train[sets.poison_indices].astype(int) - x[sets.poison_indices].astype(int))
    assert diff[inner].max() <= 8 and diff[inner].max() > 0
    assert (sets.x_train[sets.poison_indices][:, :3, :3, 0] == [[255, 0, 255], [0, 255, 0], [255, 0, 255]]).all()
    # test time: the trigger alone on non-target images
    assert (sets.x_test == corner_trigger(data.x_test[data.y_test != 3], 255)).all()
