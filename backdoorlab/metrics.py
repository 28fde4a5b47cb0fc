"""Metric definitions (REFERENCE.md section 3), kept in one place.

- clean accuracy (CA): accuracy on the clean test set;
- attack success rate (ASR): the share of *non-target-class* test images classified
  as the target once triggered; target-class images never count;
- isolation precision |isolated & poisoned| / |isolated|, recall |isolated & poisoned| / |poisoned|.
"""
from __future__ import annotations

import math

import numpy as np


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    return float(np.mean(predictions == labels)) if len(labels) else math.nan


def attack_success_rate(predictions_on_triggered: np.ndarray, true_labels: np.ndarray, target: int) -> float:
    """Share of triggered images whose true class is not the target that are predicted as the target."""
    predictions, true_labels = np.asarray(predictions_on_triggered), np.asarray(true_labels)
    counted = true_labels != target
    return float(np.mean(predictions[counted] == target)) if counted.any() else math.nan


def isolation_precision_recall(isolated: np.ndarray, poisoned: np.ndarray) -> tuple[float, float]:
    isolated, poisoned = np.unique(isolated), np.unique(poisoned)
    hits = len(np.intersect1d(isolated, poisoned))
    precision = hits / len(isolated) if len(isolated) else math.nan
    recall = hits / len(poisoned) if len(poisoned) else math.nan
    return precision, recall
