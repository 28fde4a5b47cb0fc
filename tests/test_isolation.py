"""ABL's adaptive isolation and the feature-space expansion (backdoorlab/defenses/abl.py): a backdoor is one
label learned fast, so isolation looks for one label dominating the fastest-learned examples, and says so
when none does."""
from __future__ import annotations

import numpy as np
import torch

from backdoorlab.defenses.abl import (IsolationConfig, candidates, dominated_prefix, expand_in_features, isolate,
                                      learning_speed,
                                      otsu_split)
from backdoorlab.models import new_model
from backdoorlab.runtime import Runtime
from backdoorlab.training import TrainOptions

CPU = Runtime(torch.device("cpu"), channels_last=False)


# ------------------------------------------------------------------ learning speed and candidates

def test_learning_speed_is_the_mean_log_loss_leaving_out_the_first_epoch():
    history = [np.array([100.0, 1.0]), np.array([1.0, 0.1]), np.array([0.01, 0.1])]
    np.testing.assert_allclose(learning_speed(history), [-1.0, -1.0], atol=1e-6)
    np.testing.assert_allclose(learning_speed(history[:1]), [2.0, 0.0], atol=1e-6)  # one epoch: that epoch


def test_one_label_learned_fast_dominates_the_fastest_examples():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, 2000)
    speed = rng.normal(0.0, 0.3, 2000)
    planted = np.flatnonzero(y != 3)[:100]
    y[planted] = 3  # relabelled, like a label-flipping attack
    speed[planted] = -4.0 + rng.normal(0.0, 0.1, 100)
    found = candidates(speed, y, ratio=0.02)
    assert found.label == 3 and found.concentration == 1.0
    assert set(found.indices) <= set(planted) and len(found.indices) == 40
    assert found.gap > 3.0  # decades between these candidates and the rest of label 3


def test_on_clean_data_the_fastest_examples_are_spread_over_the_labels():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 10, 2000)
    speed = rng.normal(0.0, 0.3, 2000) - 0.2 * (y % 3)  # some classes are easier, none by far
    assert candidates(speed, y, ratio=0.02).concentration < 0.9


def test_the_dominated_prefix_keeps_a_labels_examples_while_it_holds_the_share():
    speed = np.arange(10.0)  # example i is the i-th fastest
    y = np.array([5, 5, 5, 1, 5, 5, 2, 3, 5, 4])
    # shares of label 5 along the prefix: 1, 1, 1, .75, .8, .83, .71, .63, .67, .6
    np.testing.assert_array_equal(dominated_prefix(speed, y, 5, 0.8), [0, 1, 2, 4, 5])
    np.testing.assert_array_equal(dominated_prefix(speed, y, 7, 0.8), [])


def test_otsu_splits_two_far_groups_cleanly_and_one_mode_weakly():
    rng = np.random.default_rng(0)
    two = np.concatenate([rng.normal(0.0, 0.1, 300), rng.normal(5.0, 0.1, 30)])
    effectiveness, threshold = otsu_split(two)
    assert effectiveness > 0.95 and two[:300].max() <= threshold < two[300:].min()  # the high group is > it
    one, _ = otsu_split(rng.normal(0.0, 1.0, 5000))
    assert 0.55 < one < 0.72  # 2/pi ~ 0.64 for a normal mode: no real split


# ------------------------------------------------------------------ isolation on a real model

def images(n: int, seed: int, poison_rate: float = 0.0, target: int = 0):
    """8 classes of noisy 8x8 grey images told apart by which row is brighter; a poisoned example gets a
    bright 2x2 corner patch and the target label."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 8, n)
    x = rng.integers(0, 120, size=(n, 8, 8, 1)).astype(np.int64)
    x[np.arange(n), y, :, 0] += 20  # faint: the clean task is learned slowly, the patch fast
    poisoned = rng.choice(np.flatnonzero(y != target), size=round(poison_rate * n), replace=False)
    x[poisoned, -2:, -2:, 0] = 255
    y[poisoned] = target
    return torch.from_numpy(np.clip(x, 0, 255).astype(np.uint8)), torch.from_numpy(y), poisoned


CONFIG = IsolationConfig(max_epochs=6, lr=0.05, gamma=0.5, per_example=False, augment="none",
                         selection="adaptive", ratio=0.02, min_concentration=0.9)


def run_isolation(x, y, cfg=CONFIG):
    model = new_model("convnet", x.numpy(), 8, seed=0)
    logged = []
    found = isolate(model, x, y, CPU, TrainOptions(epochs=1, lr=0.05, batch_size=64, seed=0), cfg,
                    lambda m, stats: logged.append(stats))
    return found, logged


def test_isolation_finds_a_planted_backdoor_and_stops_early():
    x, y, poisoned = images(2000, seed=0, poison_rate=0.05)
    found, logged = run_isolation(x, y)
    assert found.found and found.candidates.label == 0
    assert found.epochs < CONFIG.max_epochs and len(logged) == found.epochs
    precision = np.isin(found.indices, poisoned).mean()
    assert len(found.indices) >= 30 and precision >= 0.8


def test_isolation_on_clean_data_isolates_nothing_and_says_so():
    x, y, _ = images(2000, seed=1)
    found, logged = run_isolation(x, y)
    assert not found.found and len(found.indices) == 0
    assert found.epochs == CONFIG.max_epochs
    assert max(stats["concentration"] for stats in logged[1:]) < CONFIG.min_concentration


def test_the_papers_rule_always_isolates_the_lowest_losses():
    x, y, _ = images(2000, seed=1)
    found, _ = run_isolation(x, y, IsolationConfig(**{**CONFIG.__dict__, "selection": "lowest", "max_epochs": 2}))
    assert found.found and len(found.indices) == 40
    assert found.losses[found.indices].max() <= np.delete(found.losses, found.indices).min()


def test_an_unreachable_concentration_isolates_nothing_even_with_a_backdoor():
    x, y, _ = images(1000, seed=0, poison_rate=0.05)
    found, _ = run_isolation(x, y, IsolationConfig(**{**CONFIG.__dict__, "min_concentration": 1.01, "max_epochs": 2}))
    assert not found.found and len(found.indices) == 0


# ------------------------------------------------------------------ expansion in feature space

class PatchFeatures(torch.nn.Module):
    """A stand-in for a model that has learned the backdoor: one feature responds to the bright corner
    patch, the other to the image's overall brightness."""

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x[:, 0, -2:, -2:].mean((1, 2)) ** 4, x[:, 0].mean((1, 2))], 1)


def test_expansion_brings_in_the_poison_isolation_left_behind_and_anchors_on_clean_examples():
    x, y, poisoned = images(2000, seed=0, poison_rate=0.05)
    isolated = np.sort(poisoned[:20])  # a 20% sample of the poison, as isolation gives
    split = expand_in_features(PatchFeatures(), x, y.numpy(), isolated, CPU)
    assert set(isolated) <= set(split.forget)
    assert np.isin(poisoned, split.forget).mean() >= 0.95  # the other 80% found
    assert np.isin(split.forget, poisoned).mean() >= 0.95  # and few clean zeros with them
    assert not np.isin(split.anchors, poisoned).any() and (y.numpy()[split.anchors] == 0).all()
    assert split.separation > 0.9
