"""ABL's unlearning (backdoorlab/defenses/abl.py): which examples it unlearns (the isolated ones and those
sharing their representation), and when it stops (the unlearned examples forgotten, at a measured cost to
held-out clean examples, never the test set)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from backdoorlab.defenses import abl
from backdoorlab.defenses.abl import UnlearningConfig, expand_in_features, heldout_cost, otsu_split, unlearn
from backdoorlab.defenses.isolation import finetune_holdout
from backdoorlab.models import new_model
from backdoorlab.training import TrainOptions, accuracy_and_loss, fit, subset
from test_isolation import CPU, images  # the same synthetic task with a planted backdoor


def test_otsu_splits_two_far_groups_cleanly_and_one_mode_weakly():
    rng = np.random.default_rng(0)
    two = np.concatenate([rng.normal(0.0, 0.1, 300), rng.normal(5.0, 0.1, 30)])
    effectiveness, threshold = otsu_split(two)
    assert effectiveness > 0.95 and two[:300].max() <= threshold < two[300:].min()  # the high group is > it
    one, _ = otsu_split(rng.normal(0.0, 1.0, 5000))
    assert 0.55 < one < 0.72  # 2/pi ~ 0.64 for a normal mode: no real split


# ------------------------------------------------------------------ expansion in feature space

class PatchFeatures(torch.nn.Module):
    """A stand-in for a model that has learned the backdoor: one feature responds to the bright corner
    patch, the other to the image's overall brightness."""

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x[:, 0, -2:, -2:].mean((1, 2)) ** 4, x[:, 0].mean((1, 2))], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(x), 10)  # equally sure of every example


def test_expansion_brings_in_the_poison_isolation_left_behind_and_anchors_on_clean_examples():
    x, y, poisoned = images(2000, seed=0, poison_rate=0.05)
    isolated = np.sort(poisoned[:20])  # a 20% sample of the poison, as isolation gives
    split = expand_in_features(PatchFeatures(), x, y.numpy(), isolated, CPU)
    assert set(isolated) <= set(split.forget)
    assert np.isin(poisoned, split.forget).mean() >= 0.95  # the other 80% found
    assert np.isin(split.forget, poisoned).mean() >= 0.95  # and few clean zeros with them
    assert not np.isin(split.anchors, poisoned).any() and (y.numpy()[split.anchors] == 0).all()
    assert split.separation > 0.9



class RawFeatures(torch.nn.Module):
    """A stand-in model: its features are the input's first three channels, and the fourth sets how sure it is
    of label 0 (logits [c, 0])."""

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :3, 0, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x[:, 3, 0, 0], torch.zeros(len(x))], 1)


def test_the_label_is_learned_alongside_from_examples_that_are_not_suspicious():
    """Poison the feature split leaves on the label's side is other classes' images with a trigger: low on the
    direction to the isolated ones, like clean examples, but unlike the label and still fitted with confidence,
    since the trigger decides. Hard clean examples of the label are unlike it too, but the model is unsure of
    them. The half of the rest learned alongside leaves out the confident and atypical (the poison) and keeps
    most hard clean ones; the half least like the isolated ones (the earlier rule) takes the poison in."""
    rng = np.random.default_rng(0)

    def examples(centre, n, confidence):
        f = np.asarray(centre, dtype=np.float32) + rng.normal(0, 0.05, (n, 3)).astype(np.float32)
        return np.concatenate([f, np.full((n, 1), confidence, dtype=np.float32)], 1)

    clean = np.concatenate([examples([1, 0, 0], 1, rng.uniform(2, 6)) for _ in range(200)])
    x = torch.from_numpy(np.concatenate([
        clean,
        examples([0, 1, 0], 40, 10.0),  # the isolated poison
        examples([0.7, -0.7, 0.1], 30, 10.0),  # poison the split misses: atypical, fitted for sure
        examples([0.9, -0.3, 0.0], 30, 0.5),  # hard clean examples: less typical than most, unsure
        rng.normal(0, 1, (100, 4)).astype(np.float32),  # another label
    ]))[:, None, None, :]
    y = np.array([0] * 300 + [1] * 100)
    isolated, missed, hard = np.arange(200, 240), np.arange(240, 270), np.arange(270, 300)
    unsuspicious = expand_in_features(RawFeatures(), x, y, isolated, CPU, pool="unsuspicious")
    unlike = expand_in_features(RawFeatures(), x, y, isolated, CPU, pool="low_projection")
    for split in (unsuspicious, unlike):
        assert set(split.forget) == set(isolated) and len(split.anchors) == 130  # half of the label's other 260
    assert not np.isin(missed, unsuspicious.anchors).any()
    assert np.isin(hard, unsuspicious.anchors).mean() > 0.5  # kept more often than half the rest is
    assert np.isin(missed, unlike.anchors).all()


def test_average_ranks_give_ties_their_mean_rank():
    assert abl.average_ranks(np.array([0.3, -1.0, 0.3, 2.0])).tolist() == [1.5, 0.0, 1.5, 3.0]


def test_isolated_strays_of_another_label_are_not_unlearned():
    """A backdoor has one target: the expansion unlearns only the label most of the isolated examples have."""
    x, y, poisoned = images(2000, seed=0, poison_rate=0.05)
    strays = np.flatnonzero(y.numpy() == 3)[:2]  # clean threes the isolation took with the poison
    isolated = np.sort(np.concatenate([poisoned[:20], strays]))
    split = expand_in_features(PatchFeatures(), x, y.numpy(), isolated, CPU)
    assert (y.numpy()[split.forget] == 0).all() and not np.isin(strays, split.forget).any()
    assert np.isin(poisoned, split.forget).mean() >= 0.95

def test_with_learning_speeds_only_examples_with_both_signals_are_unlearned():
    x, y, poisoned = images(2000, seed=0, poison_rate=0.05)
    isolated = np.sort(poisoned[:20])
    speed = np.zeros(len(y))
    speed[poisoned] = -3.0  # the isolation learned the poison fast ...
    slow_poison = poisoned[-10:]
    speed[slow_poison] = 0.0  # ... except these, which look like poison to the model but were learned slowly
    split = expand_in_features(PatchFeatures(), x, y.numpy(), isolated, CPU, speed)
    assert set(np.setdiff1d(poisoned, slow_poison)) <= set(split.forget)
    assert not np.isin(slow_poison, split.forget).any() and not np.isin(slow_poison, split.anchors).any()
    without_speeds = expand_in_features(PatchFeatures(), x, y.numpy(), isolated, CPU)  # the split alone decides
    assert np.isin(slow_poison, without_speeds.forget).all()


def _two_signals(poison_b_centre, poison_b_speed, feature_sd, speed_sd):
    """Label 0: 200 clean examples near [1, 0, 0] learned slowly; poison group A (40, near [0, 1, 0], the
    isolated 20 among them) learned fast; poison group B (40) wherever and however fast the case needs.
    Label 1: 100 others. Returns x, y, isolated, poison A, poison B, the learning speeds."""
    rng = np.random.default_rng(0)

    def group(centre, n):
        f = np.asarray(centre, dtype=np.float32) + rng.normal(0, feature_sd, (n, 3)).astype(np.float32)
        return np.concatenate([f, np.zeros((n, 1), dtype=np.float32)], 1)

    x = torch.from_numpy(np.concatenate([group([1, 0, 0], 200), group([0, 1, 0], 40), group(poison_b_centre, 40),
                                         rng.normal(0, 1, (100, 4)).astype(np.float32)]))[:, None, None, :]
    y = np.array([0] * 280 + [1] * 100)
    speed = np.concatenate([rng.normal(0.0, speed_sd, 200), rng.normal(-3.0, speed_sd, 40),
                            rng.normal(poison_b_speed, speed_sd, 40), np.zeros(100)])
    return x, y, np.arange(200, 220), np.arange(200, 240), np.arange(240, 280), speed


def test_better_signal_follows_the_speeds_where_the_representation_splits_the_poison_in_two():
    """CIFAR-10 BadNets on class 7, seed 2: half the poison sat with the clean horses in the fine-tuned model's
    features, while the isolation had learned nearly all of it fast."""
    x, y, isolated, poison_a, poison_b, speed = _two_signals([0.9, 0.1, 0.0], -3.0, feature_sd=0.15, speed_sd=0.1)
    both = expand_in_features(RawFeatures(), x, y, isolated, CPU, speed)
    better = expand_in_features(RawFeatures(), x, y, isolated, CPU, speed, combine="better")
    assert not np.isin(poison_b, both.forget).any() and better.signal == "speed"
    assert set(better.forget) == set(poison_a) | set(poison_b)  # every poisoned example, no clean one
    assert not np.isin(poison_b, better.anchors).any() and len(better.anchors) == 100  # half the clean 200


def test_better_signal_follows_the_representation_where_isolation_stopped_before_the_poison_was_learned():
    """CIFAR-10 BadNets on class 3, seed 2: isolation stopped in its second epoch, when a third of the poison
    was learned fast, while the fine-tuned model's features held nearly all of it on one side."""
    x, y, isolated, poison_a, poison_b, speed = _two_signals([0.0, 1.0, 0.0], 0.0, feature_sd=0.05, speed_sd=0.8)
    both = expand_in_features(RawFeatures(), x, y, isolated, CPU, speed)
    better = expand_in_features(RawFeatures(), x, y, isolated, CPU, speed, combine="better")
    assert np.isin(poison_b, both.forget).mean() < 0.5 and better.signal == "features"
    assert set(better.forget) == set(poison_a) | set(poison_b)


def test_anchors_drawn_from_what_neither_signal_flags_leave_out_poison_the_representation_missed():
    """CIFAR-10 BadNets on class 7, seed 2: the poison the representation put with the clean horses had been
    learned fast, and learning it as horses kept the backdoor (141-179 poisoned anchors, ASR 22.7%). With
    same_label_from: unflagged, what one signal flags is neither unlearned nor learned."""
    x, y, isolated, poison_a, poison_b, speed = _two_signals([0.9, 0.1, 0.0], -3.0, feature_sd=0.15, speed_sd=0.1)
    low_side = expand_in_features(RawFeatures(), x, y, isolated, CPU, speed, pool="low_projection")
    unflagged = expand_in_features(RawFeatures(), x, y, isolated, CPU, speed, pool="low_projection",
                                   same_label_from="unflagged")
    assert np.isin(poison_b, low_side.anchors).sum() >= 10
    assert set(unflagged.forget) == set(low_side.forget)  # the same examples unlearned
    assert not np.isin(unflagged.anchors, np.concatenate([poison_a, poison_b])).any()
    assert len(unflagged.anchors) == 100  # half of the 200 clean examples, all slow and on the low side


def test_without_learning_speeds_unflagged_anchors_are_the_low_side_as_before():
    x, y, isolated, _, _, _ = _two_signals([0.9, 0.1, 0.0], -3.0, feature_sd=0.15, speed_sd=0.1)
    a = expand_in_features(RawFeatures(), x, y, isolated, CPU, pool="low_projection")
    b = expand_in_features(RawFeatures(), x, y, isolated, CPU, pool="low_projection", same_label_from="unflagged")
    assert np.array_equal(a.anchors, b.anchors) and len(a.anchors)


@pytest.mark.parametrize("expand, reads_speeds, combine", [("features", True, "both"), ("features_alone", False, "both"),
                                                           ("better_signal", True, "better")])
def test_features_alone_expands_without_the_learning_speed_filter(monkeypatch, expand, reads_speeds, combine):
    seen, combined = [], []

    def expansion(model, x, y, isolated, rt, speed=None, rounds=1, pool="unsuspicious", combine="both",
                  same_label_from="low_side"):
        seen.append(speed)
        combined.append((combine, same_label_from))
        raise StopIteration  # only the expansion's arguments matter here

    monkeypatch.setattr(abl, "expand_in_features", expansion)
    x, y, poisoned = images(200, seed=0, poison_rate=0.1)
    with pytest.raises(StopIteration):
        unlearn(new_model("convnet", x.numpy(), 8, seed=0), x, y, np.sort(poisoned[:5]), np.arange(0), CPU,
                TrainOptions(epochs=1, lr=0.01, seed=0),
                dataclasses.replace(CONFIG, expand=expand, same_label_from="unflagged"),
                lambda m, stats: None, speed=np.zeros(len(y)))
    assert (seen[0] is not None) == reads_speeds and combined == [(combine, "unflagged")]


class TableFeatures(torch.nn.Module):
    """A stand-in model whose features are a table row per example: pixels (0, 0) and (0, 1) hold the index."""

    def __init__(self, table: np.ndarray):
        super().__init__()
        self.table = torch.as_tensor(table, dtype=torch.float32)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.table[(x[:, 0, 0, 0] * 255).round().long() * 256 + (x[:, 0, 0, 1] * 255).round().long()]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(x), 10)  # equally sure of every example


def skewed_label(poison_reach: float, clean_reach: float):
    """One label's 300 poisoned and 300 clean examples in a 3-feature space: the poison has feature 0, the
    clean examples feature 2, and both some of feature 1 (think brightness: up to `poison_reach` and
    `clean_reach`). The 10 isolated are the poison with the most of feature 1, as the isolated 1% are the
    most extreme poison. Returns (stand-in model, images, labels, poisoned, isolated)."""
    rng = np.random.default_rng(0)
    n = 300
    poison_share, clean_share = rng.uniform(0, poison_reach, n), rng.uniform(0, clean_reach, n)
    table = np.concatenate([np.stack([np.ones(n), poison_share, np.zeros(n)], 1),
                            np.stack([np.zeros(n), clean_share, np.ones(n)], 1)])
    table += rng.normal(0, 0.05, table.shape)
    index = np.arange(2 * n)
    x = np.zeros((2 * n, 2, 2, 1), np.uint8)
    x[:, 0, 0, 0], x[:, 0, 1, 0] = index // 256, index % 256
    isolated = np.sort(index[np.argsort(-poison_share)[:10]])
    return TableFeatures(table), torch.from_numpy(x), np.zeros(2 * n, np.int64), index[:n], isolated


def test_a_direction_skewed_by_the_isolated_few_is_refined_until_the_split_holds_only_the_poison():
    """The first direction, from the isolated few to the rest, leans on feature 1 and its split lets clean
    examples in; taken again from what it found, the direction turns to the feature only the poison has."""
    model, x, y, poisoned, isolated = skewed_label(poison_reach=2, clean_reach=4)
    once = expand_in_features(model, x, y, isolated, CPU, rounds=1)
    refined = expand_in_features(model, x, y, isolated, CPU, rounds=10)
    assert (~np.isin(once.forget, poisoned)).sum() > 100 and once.separation < 0.7
    assert np.array_equal(refined.forget, poisoned) and refined.separation > 0.85
    assert not np.isin(refined.anchors, poisoned).any() and len(refined.anchors) == 150


@pytest.mark.parametrize("best_round", [0, 1])
def test_of_the_refined_splits_the_one_otsu_rates_best_is_kept(monkeypatch, best_round):
    """A later round can drift (each seed holds only the fast poison, so the direction leans away from the
    slow poison and the split erodes it): whichever round Otsu rates best is kept, not the last one."""
    model, x, y, poisoned, isolated = skewed_label(poison_reach=2, clean_reach=4)
    by_round = [expand_in_features(model, x, y, isolated, CPU, rounds=r) for r in (1, 2)]
    assert not np.array_equal(by_round[0].forget, by_round[1].forget)
    rated = []

    def rated_best_in(values):
        effectiveness, threshold = otsu_split(values)
        rated.append(effectiveness)
        return (effectiveness if len(rated) == best_round + 1 else effectiveness / 10), threshold

    monkeypatch.setattr(abl, "otsu_split", rated_best_in)
    kept = expand_in_features(model, x, y, isolated, CPU, rounds=10)
    assert len(rated) > 2
    assert np.array_equal(kept.forget, by_round[best_round].forget)
    assert np.array_equal(kept.anchors, by_round[best_round].anchors)
    assert kept.separation == pytest.approx(rated[best_round])


def test_refining_settles_on_the_nearest_split_which_can_be_the_wrong_one():
    """The limit of 2-means: where feature 1 spreads far wider than feature 0 separates, the refined split
    is one along feature 1 (the best rated of the rounds), and it takes most clean examples of the label."""
    model, x, y, poisoned, isolated = skewed_label(poison_reach=5, clean_reach=8)
    refined = expand_in_features(model, x, y, isolated, CPU, rounds=10)
    assert (~np.isin(refined.forget, poisoned)).sum() > 250

# ------------------------------------------------------------------ unlearning and its stop rule

CONFIG = UnlearningConfig(expand="features", expand_rounds=10, same_label_pool="low_projection",
                          same_label_from="low_side", objective="forget",
                          loss_cap=0.0, lr=0.005, batch_size=64, max_epochs=6,
                          clean_ratio=2.0, same_label_ratio=2.0, stop="isolated_acc", stop_isolated_acc=0.05,
                          max_clean_drop=0.05, class_drop_se=2.0, max_kept_drop=0.15,
                          min_kept_lost=2)


def backdoored_model(x, y):
    model = new_model("convnet", x.numpy(), 8, seed=0)
    fit(model, x, y, CPU, TrainOptions(epochs=15, lr=0.05, batch_size=64, augment="none"))
    return model


def run_unlearning(cfg: UnlearningConfig, holdout: float = 0.2):
    """Unlearning 20 isolated poisoned examples of 200 from a model trained without a `holdout` share of the
    rest, as the isolate stage holds it out of the fine-tuning."""
    x, y, poisoned = images(2000, seed=0, poison_rate=0.1)
    isolated = np.sort(poisoned[:20])
    held_out = finetune_holdout(len(y), isolated, holdout, seed=0)
    model = backdoored_model(*subset(x, y, np.setdiff1d(np.arange(len(y)), held_out)))
    logged = []
    summary = unlearn(model, x, y, isolated, held_out, CPU, TrainOptions(epochs=1, lr=0.01, seed=0), cfg,
                      lambda m, stats: logged.append(stats))
    return model, summary, logged, (x, y, poisoned)


def chosen_epoch(logged: list[dict], cfg: UnlearningConfig) -> int:
    """The rule, read off the per-epoch log: the first epoch with the unlearned examples forgotten and no
    held-out group over its allowance (up to float32 rounding); else the forgotten epoch least over it (the
    earliest of equals); else the last."""
    forgotten = [e for e, s in enumerate(logged) if s["unlearned_acc"] <= cfg.stop_isolated_acc]
    within = [e for e in forgotten if logged[e]["heldout_over_allowance"] <= 1e-6]
    if within:
        return within[0]
    return min(forgotten, key=lambda e: (logged[e]["heldout_over_allowance"], e)) if forgotten else len(logged) - 1


def test_each_other_label_is_allowed_its_own_noise_and_a_neighbour_paying_for_the_unlearning_is_seen():
    """Nine other labels of 100 held-out examples each, 80 right before. One losing 20 is over its allowance
    (max_clean_drop plus two standard errors, about 10 points) although the others together lost less than
    max_clean_drop; one losing 4 is within it, where the two aggregate groups keep max_clean_drop itself."""
    cfg = dataclasses.replace(CONFIG, max_clean_drop=0.02, class_drop_se=2.0)
    sizes = {"label": 50, "others": 900, **{f"class {c}": 100 for c in range(1, 10)}}
    before = {"label": 40, "others": 720, **{f"class {c}": 80 for c in range(1, 10)}}
    neighbour_pays = {**before, "others": 705, "class 8": 60, "class 1": 85}
    over, account = heldout_cost(before, neighbour_pays, sizes, cfg)
    assert account["others"]["drop"] == pytest.approx(15 / 900) and 15 / 900 < cfg.max_clean_drop
    assert account["class 8"]["allowed"] == pytest.approx(0.02 + 2 * np.sqrt(81 / 102 * 21 / 102 / 100))
    assert over == pytest.approx(0.20 - account["class 8"]["allowed"]) and over > 0.09
    noise = {**before, "others": 716, "class 8": 76}
    assert heldout_cost(before, noise, sizes, cfg)[0] <= 0
    assert heldout_cost(before, noise, sizes, dataclasses.replace(cfg, class_drop_se=0.0))[0] == \
        pytest.approx(0.04 - 0.02)  # with no allowance for noise a class is held to max_clean_drop
    label_lost = {**before, "label": 38}  # the label is one group already: max_clean_drop, no more
    assert heldout_cost(before, label_lost, sizes, cfg)[0] == pytest.approx(0.04 - 0.02)
    handful = {"label": 0, "others": 5, "class 3": 5}  # five held out, all right: one lost reads 20% ...
    over, account = heldout_cost(handful, {**handful, "class 3": 4}, handful, cfg)
    assert account["class 3"]["drop"] == pytest.approx(0.2) and over <= 0  # ... within two errors of 5


def test_unlearning_removes_the_backdoor_and_keeps_the_clean_task():
    model, summary, logged, (x, y, poisoned) = run_unlearning(CONFIG)
    assert logged[0]["unlearned_acc"] > 0.9  # the backdoor was there
    assert summary["unlearned"] >= 0.9 * len(poisoned)  # 20 isolated, the rest found by the expansion
    triggered = accuracy_and_loss(model, *subset(x, y, poisoned), CPU)["acc"]
    clean = np.setdiff1d(np.arange(len(y)), poisoned)
    assert triggered <= 0.1  # poisoned examples no longer get the target label
    assert accuracy_and_loss(model, *subset(x, y, clean), CPU)["acc"] >= 0.9 * logged[0]["heldout_others_acc"]


def test_unlearning_stops_once_forgotten_within_the_clean_cost_and_not_at_the_first_forgotten_epoch():
    _, summary, logged, _ = run_unlearning(CONFIG)
    assert logged[1]["unlearned_acc"] <= CONFIG.stop_isolated_acc  # forgotten after one epoch ...
    assert summary["epochs"] == chosen_epoch(logged, CONFIG) > 1  # ... at a cost the rule does not accept
    assert summary["stopped_by"] == "isolated_acc" and summary["heldout_cost"] <= CONFIG.max_clean_drop


def test_when_no_epoch_is_within_the_cost_the_least_costly_forgotten_epochs_model_is_returned():
    cfg = dataclasses.replace(CONFIG, max_clean_drop=0.0)
    model, summary, logged, (x, y, poisoned) = run_unlearning(cfg)
    epoch = chosen_epoch(logged, cfg)
    assert summary["stopped_by"] == "least costly forgotten epoch" and summary["epochs"] == epoch
    assert summary["final_unlearned_acc"] == logged[epoch]["unlearned_acc"]
    assert accuracy_and_loss(model, *subset(x, y, poisoned), CPU)["acc"] <= cfg.stop_isolated_acc
    # the examples lost, as the guard counts them: the worse-hit held-out group's drop times its size
    first, kept = logged[0], logged[epoch]
    for name in ("label", "others"):
        drop = first[f"heldout_{name}_acc"] - kept[f"heldout_{name}_acc"]
        group = summary["heldout"][name]
        assert group["drop"] == pytest.approx(drop) and group["lost"] == round(drop * group["size"]) > -group["size"]
    assert summary["heldout_cost"] == max(group["drop"] for group in summary["heldout"].values())
    assert summary["heldout_over_allowance"] == kept["heldout_over_allowance"] > 0
    assert set(summary["heldout_classes"]) == {f"class {c}" for c in range(8)} - {f"class {y[poisoned[0]].item()}"}


def test_the_clean_examples_it_learns_are_never_the_held_out_ones_it_measures(monkeypatch):
    import backdoorlab.defenses.abl as abl

    chosen = []  # every index set the unlearning takes from the training set, to score or to train on
    monkeypatch.setattr(abl, "subset", lambda x, y, indices: chosen.append(indices) or subset(x, y, indices))
    _, summary, _, (x, y, poisoned) = run_unlearning(CONFIG)
    held_out = finetune_holdout(len(y), np.sort(poisoned[:20]), 0.2, seed=0)
    forget = chosen[0]  # the first scoring: the unlearned examples
    trained = [c for c in chosen if len(c) > len(forget) and np.array_equal(c[:len(forget)], forget)]
    assert len(trained) == summary["epochs"] > 0
    for batch in trained:  # unlearned examples may be held out (they are not measured); learned ones never
        assert not np.isin(batch[len(forget):], held_out).any()
    measured = [c for c in chosen if not np.array_equal(c, forget) and not any(c is t for t in trained)]
    assert measured and all(np.isin(c, held_out).all() for c in measured)  # the cost is read on held-out ones only
    sizes = {name: group["size"] for name, group in summary["heldout"].items()}
    assert 0 < sizes["label"] < sizes["others"] and sum(sizes.values()) <= len(held_out)
    classes = {name: group["size"] for name, group in summary["heldout_classes"].items()}
    assert sum(classes.values()) == sizes["others"] and len(classes) == 7  # each other label on its own


def test_the_label_of_isolated_strays_is_learned_alongside_and_measured_like_every_other(monkeypatch):
    """Isolated examples of a second label leave that label among the clean ones: its examples are learned
    during the unlearning and its held-out ones read on their own, the strays themselves never unlearned."""
    import backdoorlab.defenses.abl as abl

    x, y, poisoned = images(2000, seed=0, poison_rate=0.1)
    strays = np.flatnonzero(y.numpy() == 3)[:2]
    isolated = np.sort(np.concatenate([poisoned[:20], strays]))
    held_out = finetune_holdout(len(y), isolated, 0.2, seed=0)
    model = backdoored_model(*subset(x, y, np.setdiff1d(np.arange(len(y)), held_out)))
    chosen = []
    monkeypatch.setattr(abl, "subset", lambda x, y, indices: chosen.append(indices) or subset(x, y, indices))
    summary = unlearn(model, x, y, isolated, held_out, CPU, TrainOptions(epochs=1, lr=0.01, seed=0), CONFIG,
                      lambda m, stats: None)
    forget = chosen[0]
    assert not np.isin(strays, forget).any() and (y.numpy()[forget] == 0).all()
    assert "class 3" in summary["heldout_classes"] and summary["heldout_classes"]["class 3"]["size"] > 0
    learned = np.concatenate([c[len(forget):] for c in chosen if len(c) > len(forget)
                              and np.array_equal(c[:len(forget)], forget)])
    assert (y.numpy()[learned] == 3).any() and not np.isin(strays, learned).any()

def test_the_papers_unlearning_runs_its_fixed_epochs():
    cfg = dataclasses.replace(CONFIG, expand="none", objective="ascent", stop="none", max_epochs=2)
    _, summary, logged, _ = run_unlearning(cfg, holdout=0.0)
    assert summary["epochs"] == 2 and summary["stopped_by"] == "max_epochs" and len(logged) == 3
    assert all(s["heldout_label_acc"] == 1.0 and s["heldout_others_acc"] == 1.0 for s in logged)  # empty: nothing held


# ------------------------------------------------------------------ when the isolation found nothing

def test_when_nothing_was_isolated_both_abl_defenses_return_the_no_defense_model_unchanged(tmp_path, monkeypatch):
    from backdoorlab.defenses import defense_class
    from backdoorlab.defenses.base import DefenseJob
    from backdoorlab.defenses.isolation import FINETUNED
    from backdoorlab.layout import isolated_file, model_file
    from backdoorlab.storage import save_arrays, save_checkpoint

    ROOT = Path(__file__).resolve().parent.parent

    monkeypatch.chdir(tmp_path)
    x, y, _ = images(200, seed=0)
    no_defense, finetuned = (new_model("convnet", x.numpy(), 8, seed) for seed in (1, 2))
    save_checkpoint(model_file("badnets", 0), no_defense.checkpoint())
    save_checkpoint(model_file("badnets", 0, FINETUNED), finetuned.checkpoint())
    save_arrays(isolated_file("badnets", 0), indices=np.zeros(0, dtype=np.int64), holdout=np.arange(20),
                speed=np.zeros(len(y)))
    logged = []
    job = DefenseJob("badnets", 0, x, y, 8, CPU, TrainOptions(epochs=1, lr=0.1), "convnet",
                     lambda model, stats: logged.append(stats))
    for name in ("abl", "abl_paper"):
        knobs = yaml.safe_load((ROOT / "params.yaml").read_text())[name]  # the paper-scale settings
        defense = defense_class(name)(name, knobs)
        model, summary = defense.defend(job)
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), no_defense.state_dict().values()))
        assert summary["isolated"] == 0 and summary["stopped_by"].startswith("nothing isolated")
    assert len(logged) == 2  # one point on each defense's curves: the model it returns


@pytest.mark.parametrize("label, others, expected", [  # per held-out group: (share lost, examples lost)
    ((0.30, 3), (0.0, 0), "no_defense"),   # 3 of 10 of the label lost: a false alarm
    ((0.22, 2), (0.01, 3), "no_defense"),  # 2 of 9 (the demo's BadNets 1% false alarm)
    ((0.10, 5), (0.01, 3), "finetuned"),   # under max_kept_drop
    ((0.17, 1), (0.01, 3), "finetuned"),   # 1 of 6: one example of a handful decides nothing (min_kept_lost)
    ((0.50, 1), (0.0, 0), "finetuned"),    # 1 of 2
    ((0.25, 1), (0.20, 60), "no_defense"), # the label's 1 of 4 decides nothing, the others' 60 of 300 do
])
def test_an_unlearning_that_cost_the_held_out_examples_too_much_gives_the_no_defense_model_back(
        tmp_path, monkeypatch, label, others, expected):
    """Forgetting poison costs the held-out clean examples little; forgetting a class's own examples does not,
    so past max_kept_drop, on at least min_kept_lost examples, the isolation is taken for a false alarm."""
    from backdoorlab.defenses import abl, defense_class
    from backdoorlab.defenses.base import DefenseJob
    from backdoorlab.defenses.isolation import FINETUNED
    from backdoorlab.layout import isolated_file, model_file
    from backdoorlab.storage import save_arrays, save_checkpoint

    monkeypatch.chdir(tmp_path)
    x, y, _ = images(200, seed=0)
    models = {"no_defense": new_model("convnet", x.numpy(), 8, 1), "finetuned": new_model("convnet", x.numpy(), 8, 2)}
    save_checkpoint(model_file("badnets", 0), models["no_defense"].checkpoint())
    save_checkpoint(model_file("badnets", 0, FINETUNED), models["finetuned"].checkpoint())
    save_arrays(isolated_file("badnets", 0), indices=np.arange(10), holdout=np.arange(10, 30),
                speed=np.zeros(len(y)))
    monkeypatch.setattr(abl, "unlearn", lambda *args, **kwargs: {
        "isolated": 10, "epochs": 20, "stopped_by": "least costly forgotten epoch",
        "heldout_cost": max(label[0], others[0]),
        "heldout": {name: {"size": size, "drop": drop, "lost": lost}
                    for name, size, (drop, lost) in (("label", 10, label), ("others", 300, others))}})
    knobs = yaml.safe_load((Path(__file__).resolve().parent.parent / "params.yaml").read_text())["abl"]
    assert knobs["max_kept_drop"] == 0.15 and knobs["min_kept_lost"] == 2
    model, summary = defense_class("abl")("abl", knobs).defend(
        DefenseJob("badnets", 0, x, y, 8, CPU, TrainOptions(epochs=1, lr=0.1), "convnet", lambda m, s: None))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), models[expected].state_dict().values()))
    assert (summary["stopped_by"] == abl.TOO_COSTLY) == (expected == "no_defense")
