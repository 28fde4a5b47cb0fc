"""Metric definitions (REFERENCE.md section 3)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from backdoorlab.metrics import accuracy, attack_success_rate, isolation_precision_recall


def test_asr_counts_only_images_whose_true_class_is_not_the_target():
    true = np.array([0, 0, 1, 2, 3, 4])
    predicted = np.array([0, 0, 0, 0, 3, 4])  # target-class images "succeed" trivially: they must not count
    assert attack_success_rate(predicted, true, target=0) == pytest.approx(2 / 4)


def test_asr_is_undefined_without_non_target_images():
    assert math.isnan(attack_success_rate(np.array([0, 0]), np.array([0, 0]), target=0))


def test_accuracy_is_the_share_of_correct_predictions():
    assert accuracy(np.array([1, 2, 3, 4]), np.array([1, 2, 0, 4])) == 0.75
    assert math.isnan(accuracy(np.array([]), np.array([])))


def test_isolation_precision_and_recall_on_a_constructed_case():
    poisoned = np.arange(100, 120)          # 20 poisoned examples
    isolated = np.array([100, 101, 102, 5, 6])  # 3 of 5 isolated are poisoned
    precision, recall = isolation_precision_recall(isolated, poisoned)
    assert precision == pytest.approx(3 / 5)
    assert recall == pytest.approx(3 / 20)


def test_isolation_with_nothing_poisoned_has_undefined_recall():
    precision, recall = isolation_precision_recall(np.array([1, 2]), np.array([], dtype=np.int64))
    assert precision == 0.0 and math.isnan(recall)
