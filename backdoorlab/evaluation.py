"""Applying the metric definitions (metrics.py) to a model and the pipeline's data sets.

Evaluation runs in the precision the stage trained in (`train.precision`, resolved by
the Runtime): the same arithmetic that produced a model also scores it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import metrics
from .runtime import Runtime
from .training import predict


@dataclass
class TestSets:
    """The clean test set and, for an attack, the triggered non-target test images."""

    x_clean: torch.Tensor
    y_clean: torch.Tensor
    target: int | None = None
    x_triggered: torch.Tensor | None = None
    y_triggered_true: torch.Tensor | None = None

    @classmethod
    def build(cls, rt: Runtime, x_test, y_test, poisoned_test: dict | None = None, target: int | None = None):
        x, y = rt.tensors(x_test, y_test)
        if poisoned_test is None:
            return cls(x, y)
        xt, yt = rt.tensors(poisoned_test["x"], poisoned_test["y_true"])
        return cls(x, y, target, xt, yt)

    def clean_and_attack(self, model: nn.Module, rt: Runtime, per_class: bool = False) -> dict:
        """CA, clean test loss, the target class's own accuracy and ASR (for an attack), per-class accuracy."""
        logits = predict(model, self.x_clean, rt)
        pred, y = logits.argmax(1).cpu().numpy(), self.y_clean.cpu().numpy()
        out = {"test_acc": metrics.accuracy(pred, y), "test_loss": F.cross_entropy(logits, self.y_clean).item()}
        if per_class:
            out["class_acc"] = [metrics.accuracy(pred[y == c], y[y == c]) for c in range(logits.shape[1])]
        if self.target is not None:
            in_target = y == self.target
            out["target_class_acc"] = metrics.accuracy(pred[in_target], y[in_target])
            triggered = predict(model, self.x_triggered, rt).argmax(1).cpu().numpy()
            out["asr"] = metrics.attack_success_rate(triggered, self.y_triggered_true.cpu().numpy(), self.target)
        return out


def training_fit(model: nn.Module, rt: Runtime, x_train: torch.Tensor, y_train: torch.Tensor,
                 poison_indices: np.ndarray) -> dict[str, float]:
    """Accuracy on the clean and on the poisoned part of the training set (labels as trained), and its loss."""
    logits = predict(model, x_train, rt)
    pred, y = logits.argmax(1).cpu().numpy(), y_train.cpu().numpy()
    poisoned = np.zeros(len(y), dtype=bool)
    poisoned[poison_indices] = True
    return {"train_acc_clean": metrics.accuracy(pred[~poisoned], y[~poisoned]),
            "train_acc_poisoned": metrics.accuracy(pred[poisoned], y[poisoned]),
            "train_loss": F.cross_entropy(logits, y_train).item()}


def score(model: nn.Module, rt: Runtime, x_train: torch.Tensor, y_train: torch.Tensor,
          poison_indices: np.ndarray, tests: TestSets) -> dict:
    """One model's row of the results table (NaN where a metric does not apply is stored as None)."""
    row = {**training_fit(model, rt, x_train, y_train, poison_indices),
           **tests.clean_and_attack(model, rt, per_class=True), "target": tests.target}
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
