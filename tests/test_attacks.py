"""Attacks: exact trigger pixels, which images are poisoned, and how labels change."""
from __future__ import annotations

import numpy as np
import pytest

from backdoorlab.attacks import ATTACKS, attack_class, param_keys
from backdoorlab.attacks.badnets import BadNets
from backdoorlab.params import ParamError


def badnets(rate=0.1, target=0, seed=0):
    return BadNets({"badnets_rate": rate}, target, seed)


def test_badnets_stamps_the_reference_checker_in_the_bottom_right_corner(rgb_images):
    out = badnets().trigger(rgb_images)
    expected = np.array([[255, 0, 255], [0, 255, 0], [255, 0, 0]], dtype=np.uint8)
    for channel in range(3):
        assert (out[:, 29:32, 29:32, channel] == expected).all()
    # every other pixel is untouched
    mask = np.ones((32, 32), dtype=bool)
    mask[29:, 29:] = False
    assert (out[:, mask] == rgb_images[:, mask]).all()
    assert out.dtype == np.uint8


def test_badnets_works_on_grayscale_images_of_any_size():
    images = np.full((2, 28, 28, 1), 7, dtype=np.uint8)
    out = badnets().trigger(images)
    assert out[0, 25:, 25:, 0].tolist() == [[255, 0, 255], [0, 255, 0], [255, 0, 0]]
    assert (out[:, :25] == 7).all() and (out[:, :, :25] == 7).all()


def test_label_flipping_poisons_rate_of_all_images_drawn_only_from_other_classes():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, size=(200, 8, 8, 3), dtype=np.uint8)
    y = np.arange(200) % 10
    sets = badnets(rate=0.1, target=3).make_sets(x, y, x[:50], y[:50])
    assert len(sets.poison_indices) == 20
    assert (sets.y_train_true[sets.poison_indices] != 3).all()
    assert (sets.y_train[sets.poison_indices] == 3).all()
    untouched = np.setdiff1d(np.arange(200), sets.poison_indices)
    assert (sets.y_train[untouched] == y[untouched]).all()
    assert (sets.x_train[untouched] == x[untouched]).all()
    assert (sets.x_train[sets.poison_indices, -3:, -3:, 0] == [[255, 0, 255], [0, 255, 0], [255, 0, 0]]).all()


def test_triggered_test_set_holds_every_non_target_image_labelled_as_target():
    x = np.zeros((30, 8, 8, 1), dtype=np.uint8)
    y = np.arange(30) % 10
    sets = badnets(target=2).make_sets(x, y, x, y)
    assert len(sets.y_test) == 27
    assert (sets.y_test == 2).all()
    assert (sets.y_test_true != 2).all()
    assert (y[sets.test_indices] == sets.y_test_true).all()
    assert (sets.x_test[:, -3:, -3:, 0] == [[255, 0, 255], [0, 255, 0], [255, 0, 0]]).all()


def test_poison_selection_is_seeded():
    x = np.zeros((100, 8, 8, 1), dtype=np.uint8)
    y = np.arange(100) % 10
    a = badnets(seed=5).make_sets(x, y, x, y).poison_indices
    b = badnets(seed=5).make_sets(x, y, x, y).poison_indices
    c = badnets(seed=6).make_sets(x, y, x, y).poison_indices
    assert (a == b).all() and not (a == c).all()


def test_a_rate_larger_than_the_non_target_share_is_refused():
    x = np.zeros((10, 8, 8, 1), dtype=np.uint8)
    y = np.zeros(10, dtype=np.int64)
    y[:2] = 1  # only two images outside the target class 0
    with pytest.raises(ParamError, match=r"attack.badnets_rate"):
        badnets(rate=0.5).make_sets(x, y, x, y)


def test_registry_finds_attacks_by_name_and_lists_their_params():
    assert attack_class("badnets") is BadNets
    assert param_keys("badnets") == ["attack.target", "attack.seed", "attack.badnets_rate"]
    with pytest.raises(ParamError, match="unknown attack 'nope'; allowed: badnets"):
        attack_class("nope")
    for name, cls in ATTACKS.items():
        assert cls.name == name
        assert cls.rate_knob in cls.knobs
