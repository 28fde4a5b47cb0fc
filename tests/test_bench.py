"""The benchmark's bookkeeping: file names, params edits, and the totals it derives from stage timings.

No timing is asserted and no pipeline is run here: only the arithmetic the figures go through."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from backdoorlab.runtime import Runtime
from benchmarks.bench import ROOT, aggregate, edit_params, slug, stage_model, stage_row
from benchmarks.isolation_confirm import persistence


def test_slug_is_a_lowercase_file_name_with_the_thread_count():
    assert slug("AMD EPYC", 2) == "amd-epyc-2t"
    assert slug("Intel(R) Xeon(R) CPU @ 2.20GHz", 8) == "intel-xeon-2-20ghz-8t"
    assert slug("AMD EPYC 7B13 64-Core Processor", 16) == "amd-epyc-7b13-16t"
    assert slug("AMD EPYC", 16, gpu="NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3-amd-epyc-16t"
    assert slug("", 1) == "unknown-cpu-1t"
    # the same 'AMD EPYC' name on a Zen 3 and a Zen 4 machine: the family and model tell them apart
    assert slug("AMD EPYC", 2, family_model="25/17") == "amd-epyc-f25m17-2t"
    assert slug("AMD EPYC", 2, family_model="25/1") != slug("AMD EPYC", 2, family_model="25/17")
    for name in ("a/b c", "x\\y:z*?"):
        assert all(ch.isalnum() or ch == "-" for ch in slug(name, 4))


def row(stage, wall, model=None, images=0, ips=None, **phases):
    """A timings record as backdoorlab.runner writes it, through stage_row."""
    record = {"stage": stage, "wall_s": wall, "phases_s": phases, "trained_images": images,
              "train_images_per_s": ips}
    params = {"train": {"arch": model}, "surrogate": {"arch": "convnet", "adversarial": True}}
    return stage_row(record, params)


def test_stage_overhead_is_wall_minus_the_work_phases():
    r = row("stages.train clean 0", 10.0, "convnet", startup=0.5, data=1.0, training=6.0, evaluation=2.0, other=0.5)
    assert r["overhead_s"] == pytest.approx(1.0)  # start-up 0.5 + other 0.5
    assert r["model"] == "convnet"
    poison = row("stages.poison badnets", 4.0, startup=1.0, poisoning=2.0, pictures=0.5, other=0.5)
    assert poison["overhead_s"] == pytest.approx(1.5) and poison["model"] is None


def test_totals_add_dvc_time_to_the_overhead_and_weight_images_per_second_by_training_time():
    rows = [row("stages.data", 2.0, startup=0.5, data=1.0, other=0.5),
            # 1000 images at 100/s (10 s) and 3000 images at 1000/s (3 s): 4000 / 13 s, not the mean 550
            row("stages.train clean 0", 14.0, "wrn16-1", 1000, 100.0, startup=0.5, training=12.0, other=1.5),
            row("stages.isolate badnets 0", 5.0, "wrn16-1", 3000, 1000.0, startup=0.5, training=4.0, other=0.5)]
    totals = aggregate(rows, 27.0, "wrn16-1", best_step=400.0)
    assert totals["stages"] == 3
    assert totals["stage_wall_s"] == pytest.approx(21.0)
    assert totals["dvc_s"] == pytest.approx(6.0)
    assert totals["dvc_per_stage_s"] == pytest.approx(2.0)
    assert totals["stage_overhead_s"] == pytest.approx(1.0 + 2.0 + 1.0)
    assert totals["overhead_s"] == pytest.approx(4.0 + 6.0)
    assert totals["overhead_mean_s"] == pytest.approx(10.0 / 3, abs=1e-3)
    assert totals["trained_images"] == 4000 and totals["model_stages"] == 2
    assert totals["train_images_per_s"] == pytest.approx(4000 / 13, abs=0.1)
    assert totals["step_percent"] == pytest.approx(100 * (4000 / 13) / 400, abs=0.1)
    assert totals["phases_s"]["training"] == pytest.approx(16.0)


def test_only_the_configs_model_counts_towards_images_per_second():
    rows = [row("stages.train clean 0", 5.0, "convnet", 1000, 500.0, training=2.0),
            row("stages.surrogate", 9.0, None, 1000, 50.0, training=8.0),  # adversarial: not a plain step
            row("stages.train badnets 0", 5.0, "convnet", 1000, 1000.0, training=1.0)]
    assert rows[1]["model"] is None
    totals = aggregate(rows, 20.0, "convnet")
    assert totals["train_images_per_s"] == pytest.approx(2000 / 3, abs=0.1)
    assert totals["step_percent"] is None  # no bare step to compare with
    assert aggregate(rows, 20.0, "wrn16-1")["train_images_per_s"] is None
    assert aggregate([], 3.0, "convnet")["overhead_mean_s"] is None


def test_stage_model_follows_the_params():
    params = {"train": {"arch": "wrn16-1"}, "surrogate": {"arch": "convnet", "adversarial": False}}
    assert stage_model("stages.defend abl badnets 0", params) == "wrn16-1"
    assert stage_model("stages.surrogate", params) == "convnet"
    assert stage_model("stages.attacker", params) is None  # trains a trigger generator alongside
    assert stage_model("stages.report", params) is None


def test_edit_params_sets_seeds_and_makes_a_relative_source_absolute(tmp_path):
    text = ("# top\nseeds: [0, 1, 2]  # three\n\ndata:\n  source: ../../shared/x.tar.gz  # a copy\n"
            "  sha256: abc\n\nattack:\n  source: ../not/this\n")
    out = edit_params(text, seeds=2, base=tmp_path / "config")
    assert "seeds: [0, 1]" in out and "seeds: [0, 1, 2]" not in out
    assert f'  source: "{os.path.abspath(tmp_path / "config" / "../../shared/x.tar.gz")}"  # a copy\n' in out
    assert "  source: ../not/this\n" in out  # another section's key of the same name is left alone
    assert out.startswith("# top\n") and "  sha256: abc\n" in out
    assert edit_params("data:\n  source: cifar10\n", base=tmp_path) == "data:\n  source: cifar10\n"
    assert edit_params("data:\n  source: /abs/x.tar\n", base=tmp_path) == "data:\n  source: /abs/x.tar\n"


def test_cifar10_cpu_source_points_at_the_shared_datasets():
    import yaml

    text = (ROOT / "cifar10-cpu" / "params.yaml").read_text()
    source = yaml.safe_load(edit_params(text, base=ROOT / "cifar10-cpu"))["data"]["source"]
    assert source == os.path.abspath(ROOT / ".." / "shared" / "datasets" / Path(source).name)


def test_help_describes_the_pipeline():
    done = subprocess.run([sys.executable, "-m", "benchmarks.bench", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for words in ("pipeline", "--skip-pipeline", "--config", "--targets", "--seeds", "--no-worker", "--output",
                  "BACKDOORLAB_TIMINGS", "benchmarks/results"):
        assert words in done.stdout


def test_the_reference_timing_refuses_a_folder_that_is_not_the_reference_code(tmp_path):
    done = subprocess.run([sys.executable, "-m", "benchmarks.reference_abl", "run", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 2 and "not a checkout of bboylyg/ABL" in done.stderr
    (tmp_path / "backdoor_isolation.py").write_text("")
    done = subprocess.run([sys.executable, "-m", "benchmarks.reference_abl", "run", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 2 and "no converted data" in done.stderr


class CornerTrigger(torch.nn.Module):
    """A backdoored model in one line: class 1 when the top-left pixel is white, else class 0."""

    def forward(self, x):
        on = (x[:, 0, 0, 0] > 0.9).float()
        return torch.stack([1 - on, on], 1)


def test_superimposition_keeps_a_full_strength_trigger_under_the_clipped_sum_and_halves_it_under_the_mean():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 100, size=(15, 4, 4, 1), dtype=np.uint8)
    x[:5, 0, 0, 0] = 255  # five triggered examples, labelled 1
    x[5:, 0, 0, 0] = 0
    y = np.array([1] * 5 + [0] * 10)
    rt = Runtime(torch.device("cpu"), None, False)
    xt = torch.from_numpy(x)
    triggered, clean = np.arange(5), np.arange(5, 15)
    assert persistence(CornerTrigger(), xt, y, triggered, 1, rt, 4, 0.0, rng) == 1.0
    assert persistence(CornerTrigger(), xt, y, triggered, 1, rt, 4, 0.5, rng) == 0.0
    # a clean example blended with triggered partners (the only other label) takes their label
    assert persistence(CornerTrigger(), xt, y, clean, 0, rt, 4, 0.0, rng) == 0.0


def test_the_superimposition_probe_names_the_attacks_it_can_read_and_exits_2(tmp_path):
    result = subprocess.run([sys.executable, "-m", "benchmarks.isolation_confirm", "nosuch", "--output",
                             str(tmp_path / "out.jsonl")], cwd=tmp_path, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "nosuch" in result.stderr and "clean" in result.stderr
    assert not (tmp_path / "out.jsonl").exists()


def test_the_expansion_probe_scores_a_round_by_what_the_unlearning_would_take_from_it():
    from backdoorlab.defenses.abl import FeatureSplit
    from benchmarks.expansion_rounds import score_split
    # six examples of one label: the first three poisoned; the high side is the three projected above 0.5
    split = FeatureSplit(np.array([0.9, 0.8, 0.1, 0.7, 0.2, 0.0]), 0.5, 0.8)
    isolated = np.array([True, False, False, False, False, False])
    fast = np.array([True, True, True, False, False, False])  # example 3 is high but slow: neither side
    poisoned = np.array([True, True, True, False, False, False])
    score = score_split(split, isolated, fast, np.eye(6), None, poisoned)  # same_label_pool: low_projection
    assert score["high"] == (2, 1) and score["unlearned"] == (2, 0)
    # the rest (2, 4, 5) is cut at its median projection (0.1): examples 2 and 5, one of them poisoned
    assert score["anchors"] == (1, 2) and score["separation"] == 0.8


@pytest.mark.parametrize("probe", ["expansion_rounds", "isolation_confirm", "isolation_replay", "unlearn_oracle",
                                   "unlearned_destinations"])
def test_the_probes_run_from_a_configuration_folder_as_their_usage_says(probe):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-m", f"benchmarks.{probe}", "--help"], cwd=ROOT / "demo",
                            capture_output=True, text=True, env=env)
    assert result.returncode == 0 and f"python -m benchmarks.{probe}" in result.stdout


@pytest.mark.parametrize("probe", ["expansion_rounds", "unlearn_oracle", "unlearned_destinations"])
def test_the_table_probes_name_the_attacks_they_can_read_and_exit_2_writing_nothing(tmp_path, probe):
    (tmp_path / "params.yaml").write_text("abl:\n  expand_rounds: 10\n")
    result = subprocess.run([sys.executable, "-m", f"benchmarks.{probe}", "nosuch", "--output",
                             str(tmp_path / "out.md")], cwd=tmp_path, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "nosuch" in result.stderr
    assert not (tmp_path / "out.md").exists()


def test_the_oracle_probe_leaves_only_the_poison_out_of_the_expansions_anchors_and_puts_the_expansion_back(
        monkeypatch):
    from backdoorlab.defenses import abl
    from backdoorlab.defenses.abl import Expansion
    from benchmarks.unlearn_oracle import expansion_seen

    def expansion(*args, **kwargs):
        return Expansion(np.array([1, 2]), np.array([3, 4, 5, 6]), 0.7)

    monkeypatch.setattr(abl, "expand_in_features", expansion)
    poisoned = np.array([1, 2, 4])
    for drop, anchors in ((True, [3, 5, 6]), (False, [3, 4, 5, 6])):
        seen = {}
        with expansion_seen(poisoned, drop, seen):
            split = abl.expand_in_features()
        assert split.forget.tolist() == [1, 2] and split.anchors.tolist() == anchors and split.separation == 0.7
        assert seen["anchors"].tolist() == anchors and seen["forget"].tolist() == [1, 2]
        assert abl.expand_in_features is expansion


def test_the_expansion_probe_takes_from_its_kept_round_exactly_what_the_defense_unlearns_and_learns():
    from backdoorlab.defenses.abl import (expand_in_features, fast_learned, feature_splits, features, label_confidence,
                                          speed_split)
    from benchmarks.expansion_rounds import unlearning_sets
    from test_isolation import CPU
    from test_unlearning import skewed_label
    model, x, y, poisoned, isolated = skewed_label(poison_reach=2, clean_reach=4)
    speed = np.zeros(len(y))
    speed[poisoned[:200]] = -3.0  # two thirds of the poison learned fast: the fast filter matters
    members = np.arange(len(y))
    mask = np.isin(members, isolated)
    fast = fast_learned(speed, members)
    f, confidence = features(model, x, CPU), label_confidence(model, x, 0, CPU)
    splits = feature_splits(f, mask, fast, 10)
    kept = max(splits, key=lambda s: s.separation)
    forget, anchors = unlearning_sets(kept, mask, fast, f, confidence)
    defense = expand_in_features(model, x, y, isolated, CPU, speed, rounds=10)
    assert len(splits) > 1 and forget.sum() > len(isolated)
    assert np.array_equal(members[forget], defense.forget) and np.array_equal(members[anchors], defense.anchors)
    # abl.expand: features_alone, which the probe mirrors by counting every example as fast
    every = fast_learned(None, members)
    kept = max(feature_splits(f, mask, every, 10), key=lambda s: s.separation)
    forget, anchors = unlearning_sets(kept, mask, every, f, confidence)
    alone = expand_in_features(model, x, y, isolated, CPU, None, rounds=10)
    assert np.array_equal(members[forget], alone.forget) and np.array_equal(members[anchors], alone.anchors)
    # abl.expand: better_signal: the kept round's high side or the fast side, whichever Otsu rates cleaner
    speed_separation, fast = speed_split(speed, members)
    kept = max(feature_splits(f, mask, fast, 10), key=lambda s: s.separation)
    forget, anchors = unlearning_sets(kept, mask, fast, f, confidence, "better", speed_separation)
    better = expand_in_features(model, x, y, isolated, CPU, speed, rounds=10, combine="better")
    assert np.array_equal(members[forget], better.forget) and np.array_equal(members[anchors], better.anchors)
    # abl.same_label_from: unflagged: the anchors come from what neither signal flags
    forget, anchors = unlearning_sets(kept, mask, fast, f, confidence, unflagged=True)
    unflagged = expand_in_features(model, x, y, isolated, CPU, speed, rounds=10, same_label_from="unflagged")
    assert np.array_equal(members[forget], unflagged.forget) and np.array_equal(members[anchors], unflagged.anchors)


def test_the_destination_probe_counts_what_left_the_label_and_how_spread_it_went():
    from benchmarks.unlearned_destinations import auc, destinations, spread
    before = np.array([0, 0, 0, 0, 0, 3])  # label 0; the last was not predicted as the label to begin with
    after = np.array([0, 1, 2, 3, 1, 1])
    taken, counts = destinations(before, after, label=0, classes=4)
    assert taken.tolist() == [False, True, True, True, True, False] and counts.tolist() == [0, 2, 1, 1]
    top, entropy = spread(counts)
    assert top == 0.5 and 0.9 < entropy < 1.0  # over log 3: the three other classes
    assert spread(np.array([0, 4, 0, 0])) == (1.0, 0.0)
    assert auc(np.array([0.9, 0.8, 0.1, 0.2]), np.array([True, True, False, False])) == 1.0
    assert auc(np.array([0.5, 0.5]), np.array([True, False])) == 0.5


def test_a_short_schedule_variant_reads_the_training_options_it_overrides():
    from benchmarks.short_schedules import variant

    assert variant("epochs=8,augment=flip,label_smoothing=0.2,batch_size=64,lr=0.2") == {
        "epochs": 8, "augment": "flip", "label_smoothing": 0.2, "batch_size": 64, "lr": 0.2}


@pytest.mark.parametrize("text", ["label_smoothing=1", "label_smoothing=-0.1", "epochs=0", "augment=rotate",
                                  "lr=fast", "warmup=2"])
def test_a_short_schedule_variant_out_of_params_yamls_range_or_unknown_is_refused(text):
    import argparse

    from benchmarks.short_schedules import variant

    with pytest.raises(argparse.ArgumentTypeError):
        variant(text)
