"""Attacks: exact trigger pixels, which images are poisoned, and how labels change."""
from __future__ import annotations

import numpy as np
import pytest

from backdoorlab.attacks import ATTACKS, attack_class, attack_module, param_keys
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
    assert attack_module("badnets") == "backdoorlab.attacks.badnets"
    assert param_keys("badnets") == ["attack.target", "attack.seed", "attack.badnets_rate"]
    with pytest.raises(ParamError, match="unknown attack 'nope'; allowed: badnets"):
        attack_class("nope")


@pytest.mark.parametrize("name", list(ATTACKS))
def test_every_registered_attack_carries_its_registry_name_and_declares_its_rate_knob(name):
    cls = attack_class(name)
    assert cls.__module__ == attack_module(name)
    assert cls.name == name
    assert cls.rate_knob in cls.knobs
    computes = ["train.threads"] if cls.inputs else []  # a model's arithmetic rounds per thread count
    assert param_keys(name) == ["attack.target", "attack.seed", *(f"attack.{k}" for k in cls.knobs), *computes]


# ------------------------------------------------------------------ Blend

from backdoorlab.attacks.blend import Blend  # noqa: E402
from backdoorlab.attacks.sig import SIG, sig_signal  # noqa: E402


def blend_attack(alpha=0.2, test_alpha=0.2, key="", seed=0, rate=0.1):
    return Blend({"blend_rate": rate, "blend_alpha": alpha, "blend_test_alpha": test_alpha, "blend_key": key},
                 0, seed)


def test_blend_mixes_each_image_with_one_fixed_key(rgb_images):
    attack = blend_attack(alpha=0.2)
    key = attack.key(rgb_images.shape[1:]).astype(np.float64)
    out = attack.poison(rgb_images)
    expected = np.clip(np.rint(0.8 * rgb_images + 0.2 * key), 0, 255)
    assert (out == expected).all()
    # the same key for every image: (out - 0.8 x) / 0.2 recovers it up to rounding
    recovered = (out.astype(np.float64) - 0.8 * rgb_images) / 0.2
    assert np.abs(recovered - key).max() <= 2.5 + 1e-9


def test_blend_key_is_seeded_and_the_test_alpha_is_separate(rgb_images):
    assert (blend_attack(seed=3).key((32, 32, 3)) == blend_attack(seed=3).key((32, 32, 3))).all()
    assert not (blend_attack(seed=3).key((32, 32, 3)) == blend_attack(seed=4).key((32, 32, 3))).all()
    attack = blend_attack(alpha=0.1, test_alpha=0.3)
    key = attack.key((32, 32, 3)).astype(np.float64)
    assert (attack.trigger(rgb_images) == np.clip(np.rint(0.7 * rgb_images + 0.3 * key), 0, 255)).all()


def test_blend_key_can_be_an_image_file(tmp_path):
    from PIL import Image

    Image.fromarray(np.full((64, 64, 3), 200, dtype=np.uint8)).save(tmp_path / "key.png")
    attack = blend_attack(alpha=0.5, key=str(tmp_path / "key.png"))
    out = attack.poison(np.zeros((1, 32, 32, 3), dtype=np.uint8))
    assert (out == 100).all()
    with pytest.raises(ParamError, match="attack.blend_key: .* is not a file"):
        blend_attack(key=str(tmp_path / "missing.png")).poison(np.zeros((1, 8, 8, 3), dtype=np.uint8))


# ------------------------------------------------------------------ SIG

def sig_attack(delta=30, freq=6, fraction=0.5, target=0):
    return SIG({"delta": delta, "freq": freq, "sig_fraction": fraction}, target, 0)


def test_sig_values_on_a_constant_image_are_exact_and_never_wrap_around():
    images = np.full((1, 32, 32, 3), 100, dtype=np.uint8)
    out = sig_attack(delta=30, freq=6).trigger(images)
    j = np.arange(32)
    expected_row = np.rint(100 + 30 * np.sin(2 * np.pi * j * 6 / 32))
    assert (out[0, :, :, 1] == expected_row[None, :]).all()  # same on every row and channel
    assert (out[0, :, :, 0] == out[0, :, :, 2]).all()
    # near the range ends the signal clips instead of wrapping (the reference code's uint8 bug)
    dark = sig_attack(delta=30).trigger(np.full((1, 32, 32, 1), 10, dtype=np.uint8))[0, 0, :, 0]
    bright = sig_attack(delta=30).trigger(np.full((1, 32, 32, 1), 250, dtype=np.uint8))[0, 0, :, 0]
    assert dark.min() == 0 and dark.max() == 40
    assert bright.max() == 255 and bright.min() == 220


def test_sig_signal_formula():
    assert sig_signal(4, 20, 1).tolist() == pytest.approx([0, 20, 0, -20], abs=1e-9)


def test_sig_only_touches_target_class_images_and_never_changes_a_label():
    rng = np.random.default_rng(0)
    x = rng.integers(30, 220, size=(100, 8, 8, 3), dtype=np.uint8)
    y = np.arange(100) % 10
    sets = sig_attack(fraction=0.5, target=4).make_sets(x, y, x, y)
    assert (sets.y_train == y).all()
    assert (y[sets.poison_indices] == 4).all() and len(sets.poison_indices) == 5
    changed = np.flatnonzero((sets.x_train != x).any(axis=(1, 2, 3)))
    assert set(changed) == set(sets.poison_indices)
    # at test time the signal goes on non-target images, all labelled as the target
    assert (sets.y_test_true != 4).all() and (sets.y_test == 4).all()
    assert (sets.x_test == sig_attack(target=4).trigger(x[y != 4])).all()
