"""The results table: one row per model in registry order, mean +- std over seeds, the worst seed's ASR,
isolation precision/recall on the rows of defenses that isolate."""
from __future__ import annotations

import math
import shutil

import pytest

from backdoorlab.layout import isolation_metrics, scores_file
from backdoorlab.report import results_table, summary_metrics, to_markdown
from backdoorlab.storage import save_json


def row(test_acc, asr=None, target=0, class_acc=None, **extra):
    return {"train_acc_clean": 0.99, "train_acc_poisoned": None if asr is None else 1.0, "test_acc": test_acc,
            "test_loss": 0.2, "train_loss": 0.1, "asr": asr, "target": None if asr is None else target,
            "target_class_acc": None if asr is None else 0.9, "class_acc": class_acc or [0.5] * 10, **extra}


@pytest.fixture
def metrics_dir(tmp_path):
    scores, isolation = tmp_path / "scores", tmp_path / "isolation"
    for seed, (clean_acc, target_acc) in enumerate([(0.90, 0.80), (0.94, 0.84)]):
        save_json(tmp_path / scores_file("clean", seed).relative_to("metrics"),
                  row(clean_acc, class_acc=[target_acc] + [0.5] * 9))
    for seed, (acc, asr) in enumerate([(0.88, 1.0), (0.86, 0.98)]):
        save_json(tmp_path / scores_file("badnets", seed).relative_to("metrics"), row(acc, asr))
    save_json(tmp_path / scores_file("badnets", 0, "abl").relative_to("metrics"),
              row(0.85, 0.02, defense={"isolated": 10}))
    save_json(tmp_path / scores_file("badnets", 1, "abl").relative_to("metrics"),
              row(0.83, 0.10, defense={"isolated": 8}))
    for seed, asr in enumerate([0.04, 0.0]):  # the clean model on badnets' triggered images
        save_json(tmp_path / scores_file("badnets", seed, "clean_model").relative_to("metrics"), row(0.92, asr))
    for seed, precision in enumerate([1.0, 0.5]):
        save_json(tmp_path / isolation_metrics("badnets", seed).relative_to("metrics"),
                  {"precision": precision, "recall": 0.1})
    return scores, isolation


def test_rows_follow_the_registry_order_and_skip_models_not_trained(metrics_dir):
    mean, _ = results_table(*metrics_dir)
    assert list(mean.index) == ["clean data (reference)", "badnets, clean model", "badnets, no defense",
                                "badnets + abl"]
    assert mean["seeds"].tolist() == [2, 2, 2, 2]


def test_each_attack_has_a_row_for_the_clean_model_on_its_triggered_images_the_asr_with_no_poison(metrics_dir):
    mean, _ = results_table(*metrics_dir)
    assert mean.loc["badnets, clean model", "asr"] == pytest.approx(2.0)
    assert mean.loc["badnets, clean model", "worst_asr"] == pytest.approx(4.0)
    assert math.isnan(mean.loc["badnets, clean model", "isolation_precision"])


def test_cells_are_the_mean_and_sample_std_over_seeds_in_percent(metrics_dir):
    mean, std = results_table(*metrics_dir)
    assert mean.loc["clean data (reference)", "test_acc"] == pytest.approx(92.0)
    assert std.loc["clean data (reference)", "test_acc"] == pytest.approx(math.sqrt(2 * 2.0 ** 2))  # ddof 1
    assert mean.loc["badnets + abl", "asr"] == pytest.approx(6.0)
    assert mean.loc["badnets, no defense", "train_loss"] == pytest.approx(0.1)  # losses are not scaled


def test_worst_seed_asr_is_the_highest_any_seed_reached(metrics_dir):
    mean, std = results_table(*metrics_dir)
    assert mean.loc["badnets + abl", "worst_asr"] == pytest.approx(10.0)
    assert math.isnan(std.loc["badnets + abl", "worst_asr"])


def test_the_clean_model_target_class_accuracy_is_its_accuracy_on_the_attacks_target(metrics_dir):
    mean, _ = results_table(*metrics_dir)
    assert mean.loc["clean data (reference)", "target_class_acc"] == pytest.approx(82.0)


def test_the_unlearning_plot_reads_each_attacks_floor_from_its_clean_model_row(metrics_dir):
    from backdoorlab.report import clean_model_floors

    assert clean_model_floors(results_table(*metrics_dir)[0]) == {"badnets": pytest.approx(2.0)}


def test_isolation_scores_appear_only_on_rows_of_defenses_that_isolate(metrics_dir):
    mean, _ = results_table(*metrics_dir)
    assert mean.loc["badnets + abl", "isolation_precision"] == pytest.approx(75.0)
    assert math.isnan(mean.loc["badnets, no defense", "isolation_precision"])


def markdown_cells(markdown: str) -> dict[str, dict[str, str]]:
    """{model: {column title: cell}} from a markdown table."""
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in markdown.splitlines()
            if line.startswith("|")]
    header, body = rows[0], rows[2:]  # rows[1] is the alignment line
    return {cells[0]: dict(zip(header[1:], cells[1:])) for cells in body}


def test_markdown_shows_mean_plus_minus_std_and_a_dash_where_a_metric_does_not_apply(metrics_dir):
    mean, std = results_table(*metrics_dir)
    clean = markdown_cells(to_markdown(mean, std))["clean data (reference)"]
    assert clean["CA %"] == "92.0 ± 2.8"
    assert clean["train loss"] == "0.100 ± 0.000"
    assert clean["ASR %"] == "-"
    assert clean["seeds"] == "2"


def test_markdown_shows_the_mean_alone_with_one_seed(metrics_dir):
    scores, isolation = metrics_dir
    for seed1 in scores.glob("*/seed1"):
        shutil.rmtree(seed1)
    mean, std = results_table(scores, isolation)
    assert mean["seeds"].tolist() == [1, 1, 1, 1]
    assert markdown_cells(to_markdown(mean, std))["badnets + abl"]["ASR %"] == "2.0"


def test_summary_metrics_hold_each_rows_numbers_and_stds_for_dvc(metrics_dir):
    summary = summary_metrics(*results_table(*metrics_dir))
    assert summary["badnets + abl"]["asr"] == pytest.approx(6.0)
    assert summary["badnets + abl"]["asr_std"] == pytest.approx(5.6569, abs=1e-4)
    assert "asr" not in summary["clean data (reference)"]


def test_an_empty_scores_folder_gives_an_empty_table(tmp_path):
    mean, std = results_table(tmp_path / "scores", tmp_path / "isolation")
    assert mean.empty and std.empty
