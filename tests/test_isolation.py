"""ABL's adaptive isolation (backdoorlab/defenses/isolation.py): a backdoor is one label learned fast, so
isolation looks for one label dominating the fastest-learned examples, or the examples that fell together from
hard to fitted, and says so when none does."""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from backdoorlab.defenses.isolation import (DROP_FROM, IsolationConfig, candidates, decide, finetune_holdout, isolate,
                                            learning_speed, loss_drop)
from backdoorlab.models import new_model
from backdoorlab.runtime import Runtime
from backdoorlab.training import TrainOptions

CPU = Runtime(torch.device("cpu"), channels_last=False)


# ------------------------------------------------------------------ learning speed and candidates

def test_learning_speed_is_the_mean_log_loss_leaving_out_the_first_epoch():
    history = [np.array([100.0, 1.0]), np.array([1.0, 0.1]), np.array([0.01, 0.1])]
    np.testing.assert_allclose(learning_speed(history), [-1.0, -1.0], atol=1e-6)
    np.testing.assert_allclose(learning_speed(history[:1]), [2.0, 0.0], atol=1e-6)  # one epoch: that epoch


def test_a_window_keeps_only_the_latest_epochs_so_a_trigger_learned_late_is_not_diluted():
    history = [np.array([100.0, 1.0]), np.array([10.0, 0.1]), np.array([10.0, 0.1]), np.array([1e-4, 0.1])]
    np.testing.assert_allclose(learning_speed(history), [-2 / 3, -1.0], atol=1e-4)  # every epoch: still slower
    np.testing.assert_allclose(learning_speed(history, window=1), [-4.0, -1.0], atol=1e-4)
    np.testing.assert_allclose(learning_speed(history, window=2), [-1.5, -1.0], atol=1e-4)
    np.testing.assert_allclose(learning_speed(history[:2], window=2), [1.0, -1.0], atol=1e-4)  # never the first


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


# ------------------------------------------------------------------ the loss-drop signal

def test_the_loss_drop_is_the_fall_in_decades_from_the_second_epoch_to_the_learning_speed():
    history = [np.array([1.0, 1.0]), np.array([10.0, 0.1]), np.array([0.01, 0.1]), np.array([0.01, 0.1])]
    np.testing.assert_allclose(loss_drop(history, window=2), [3.0, 0.0], atol=1e-4)


def easy_classes_and_a_late_trigger(trigger: bool, epochs: int = 6, seed: int = 2):
    """Loss histories: labels 1 and 7 are easy (the lowest losses throughout, so they share the fastest
    examples); with `trigger`, 30 examples of label 3 are hard in the first two epochs (images of other
    classes) and fitted from the third on, yet never as low as the easy classes: a trigger learned late."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, 2000)
    base = np.where(np.isin(y, [1, 7]), 1e-3, 0.3) * np.exp(rng.normal(0.0, 0.3, len(y)))
    history = [base * np.exp(rng.normal(0.0, 0.2, len(y))) for _ in range(epochs)]
    planted = np.flatnonzero(y == 3)[:30]
    if trigger:
        for epoch, losses in enumerate(history):
            losses[planted] = 3.0 if epoch < 2 else 0.02
    return history, y, planted


DECIDE = IsolationConfig(max_epochs=6, lr=0.05, gamma=0.5, per_example=False, augment="none",
                         selection="adaptive", ratio=0.01, min_concentration=0.9, window=3, drop=True, min_gap=0.75)


def test_a_late_trigger_hidden_behind_easy_classes_is_found_by_its_drop_from_the_fourth_epoch():
    history, y, planted = easy_classes_and_a_late_trigger(trigger=True)
    assert all(not decide(history[:e], y, DECIDE).found for e in range(1, DROP_FROM))
    decision = decide(history[:DROP_FROM], y, DECIDE)
    assert decision.shares["speed"] < 0.9  # the fastest are the easy classes, mixed
    assert decision.found and decision.candidates.signal == "drop" and decision.candidates.label == 3
    chosen = decision.candidates.indices[y[decision.candidates.indices] == 3]
    assert set(chosen) <= set(planted) and len(chosen) == 20


def test_without_the_drop_signal_the_late_trigger_goes_unfound():
    history, y, _ = easy_classes_and_a_late_trigger(trigger=True)
    off = dataclasses.replace(DECIDE, drop=False)
    assert not any(decide(history[:e], y, off).found for e in range(1, len(history) + 1))


def test_on_clean_histories_neither_signal_singles_out_a_label():
    history, y, _ = easy_classes_and_a_late_trigger(trigger=False)
    decisions = [decide(history[:e], y, DECIDE) for e in range(1, len(history) + 1)]
    assert not any(d.found for d in decisions)
    assert max(d.shares.get("drop", 0.0) for d in decisions) < 0.5


def test_an_easy_class_holding_the_fastest_is_not_a_backdoor_when_they_barely_lead_the_rest_of_it():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 10, 2000)
    base = np.where(y == 1, 1e-3, 0.3) * np.exp(rng.normal(0.0, 0.3, len(y)))  # every "one" is easy
    history = [base * np.exp(rng.normal(0.0, 0.2, len(y))) for _ in range(4)]
    decision = decide(history, y, DECIDE)
    assert decision.candidates.label == 1 and decision.candidates.concentration == 1.0
    assert decision.candidates.gap < DECIDE.min_gap and not decision.found
    assert decide(history, y, dataclasses.replace(DECIDE, min_gap=0.0)).found


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
                         selection="adaptive", ratio=0.02, min_concentration=0.9, window=3, drop=True, min_gap=0.75)


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
    assert max(stats["drop_concentration"] for stats in logged) < CONFIG.min_concentration


def test_the_papers_rule_always_isolates_the_lowest_losses():
    x, y, _ = images(2000, seed=1)
    found, _ = run_isolation(x, y, IsolationConfig(**{**CONFIG.__dict__, "selection": "lowest", "max_epochs": 2}))
    assert found.found and len(found.indices) == 40
    assert found.losses[found.indices].max() <= np.delete(found.losses, found.indices).min()


def test_an_unreachable_concentration_isolates_nothing_even_with_a_backdoor():
    x, y, _ = images(1000, seed=0, poison_rate=0.05)
    found, _ = run_isolation(x, y, IsolationConfig(**{**CONFIG.__dict__, "min_concentration": 1.01, "max_epochs": 2}))
    assert not found.found and len(found.indices) == 0


def test_replaying_the_saved_history_takes_the_isolations_own_decision():
    from benchmarks.isolation_replay import replay

    x, y, poisoned = images(2000, seed=0, poison_rate=0.05)
    found, _ = run_isolation(x, y)
    mask = np.zeros(len(y), dtype=bool)
    mask[poisoned] = True
    again = replay(list(found.history), y.numpy(), mask, CONFIG)
    assert found.history.shape == (found.epochs, len(y))
    assert again["found"] and again["epoch"] == found.epochs and again["isolated"] == len(found.indices)
    assert again["precision"] == np.isin(found.indices, poisoned).mean()


def test_the_replays_persistence_what_if_skips_a_label_named_for_one_epoch_only():
    from benchmarks.isolation_replay import replay

    # 200 examples, 20 per label, ratio 0.05 -> 10 suspects. Epoch 2: ten clean threes are the fastest;
    # epochs 3 and 4: ten poisoned zeros are.
    labels = np.arange(200) % 10
    threes, zeros = np.flatnonzero(labels == 3)[:10], np.flatnonzero(labels == 0)[:10]
    poisoned = np.zeros(200, dtype=bool)
    poisoned[zeros] = True
    history = [np.ones(200) for _ in range(4)]
    history[1][threes] = 1e-3
    history[2][zeros] = history[3][zeros] = 1e-3
    cfg = IsolationConfig(**{**CONFIG.__dict__, "ratio": 0.05, "window": 1, "drop": False, "min_gap": 0.5,
                             "max_epochs": 4})
    once = replay(history, labels, poisoned, cfg)
    assert once["found"] and once["epoch"] == 2 and once["label"] == 3 and once["precision"] == 0.0
    twice = replay(history, labels, poisoned, cfg, persist=2)
    assert twice["found"] and twice["epoch"] == 4 and twice["label"] == 0 and twice["precision"] == 1.0
    assert not replay(history[:3], labels, poisoned, cfg, persist=2)["found"]


def test_the_replays_premise_check_reports_the_poisons_share_of_each_signals_suspects():
    from benchmarks.isolation_replay import premise

    # 100 examples, ratio 0.1 -> 10 suspects. Epoch 2: every loss 1. Epoch 3: examples 0-9 (poison) at 0.01,
    # examples 10-19 (clean) at 0.001: the clean ones are the fastest and fell the most.
    second, third = np.ones(100), np.ones(100)
    third[:10], third[10:20] = 0.01, 0.001
    poisoned = np.zeros(100, dtype=bool)
    poisoned[:10] = True
    labels = np.arange(100) % 10
    cfg = IsolationConfig(**{**CONFIG.__dict__, "ratio": 0.1, "window": 1, "max_epochs": 3})
    assert premise([np.ones(100), second, third], labels, poisoned, cfg) == "0% / 0% (epoch 3)"
    third[10:20] = 0.5  # now the poison is both the fastest and the largest fall
    assert premise([np.ones(100), second, third], labels, poisoned, cfg) == "100% / 100% (epoch 3)"
    assert premise([np.ones(100), second, third], labels, np.zeros(100, dtype=bool), cfg) == "-"


def test_the_fine_tuning_holds_out_a_random_share_of_the_examples_not_isolated_drawn_per_seed():
    isolated = np.arange(0, 1000, 50)
    held = finetune_holdout(1000, isolated, 0.1, seed=0)
    assert len(held) == 98 and not np.isin(held, isolated).any() and np.all(np.diff(held) > 0)
    assert np.array_equal(held, finetune_holdout(1000, isolated, 0.1, seed=0))
    assert not np.array_equal(held, finetune_holdout(1000, isolated, 0.1, seed=1))
    assert len(finetune_holdout(1000, isolated, 0.0, seed=0)) == 0


def test_the_replay_takes_each_folders_isolation_params_and_overrides_only_what_it_is_told(tmp_path):
    from benchmarks.isolation_replay import config

    (tmp_path / "params.yaml").write_text(
        "isolate:\n  max_epochs: 20\n  lr: 0.05\n  gamma: 0.5\n  lga: batch\n  augment: none\n"
        "  selection: adaptive\n  ratio: 0.01\n  min_concentration: 0.9\n  window: 3\n  drop: true\n"
        "  min_gap: 0.75\n")
    own = config(tmp_path, 3, True)
    assert (own.ratio, own.max_epochs, own.min_gap) == (0.01, 20, 0.75)
    smaller = config(tmp_path, 3, True, ratio=0.005)
    assert smaller.ratio == 0.005 and dataclasses.replace(smaller, ratio=0.01) == own
