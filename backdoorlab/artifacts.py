"""Reading the pipeline's own artifacts back: training sets, test sets and models.

Training data and test data are read by separate functions, so a defense's stage
hands the defense only `training_set(...)`; the test sets go to logging and scoring.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .dataset import Dataset
from .evaluation import TestSets
from .layout import CLEAN, DATASET, poisoned_dir
from .models import Classifier, load_model
from .params import ParamError
from .runner import require
from .runtime import Runtime
from .storage import load_arrays, load_json


def check_model_name(value: str) -> str:
    """A model's name: 'clean' (the reference) or an attack whose poison stage has run."""
    if value != CLEAN and not (poisoned_dir(value) / "meta.json").exists():
        made = sorted(p.parent.name for p in poisoned_dir("*").parent.glob("*/meta.json"))
        raise ParamError(f"name: no poisoned data set for {value!r}; allowed: {', '.join([CLEAN, *made])}")
    return value


class PoisonedData:
    """An attack's poison-stage output, read back (see attacks.base.PoisonedSets)."""

    def __init__(self, attack: str):
        folder = poisoned_dir(attack)
        require(folder / "train.npz", folder / "test.npz", folder / "meta.json")
        self.folder = folder
        self.meta = load_json(folder / "meta.json")
        self.target: int = self.meta["target"]

    def train(self) -> dict[str, np.ndarray]:
        return load_arrays(self.folder / "train.npz")

    def test(self) -> dict[str, np.ndarray]:
        return load_arrays(self.folder / "test.npz")


@dataclass
class TrainingSet:
    """The images a model trains on, with the ground-truth poison indices (empty when clean).

    The poison indices are for scoring (train accuracy on the poisoned part, isolation
    precision); a defense is never given them.
    """

    x: np.ndarray
    y: np.ndarray
    poison_indices: np.ndarray
    classes: list[str]
    target: int | None = None


def training_set(name: str) -> TrainingSet:
    if name == CLEAN:
        require(DATASET)
        data = Dataset.load(DATASET)
        return TrainingSet(data.x_train, data.y_train, np.zeros(0, dtype=np.int64), data.classes)
    poisoned = PoisonedData(name)
    train = poisoned.train()
    return TrainingSet(train["x"], train["y"], train["poison_indices"], poisoned.meta["classes"], poisoned.target)


def test_sets(name: str, rt: Runtime, limit: int | None = None) -> TestSets:
    """Clean test set (+ the attack's triggered test set); `limit` keeps a fixed random share for monitoring."""
    require(DATASET)
    data = Dataset.load(DATASET)

    def keep(n: int) -> np.ndarray:
        order = np.random.default_rng(0).permutation(n)
        return np.sort(order[:limit]) if limit else np.arange(n)

    clean = keep(len(data.y_test))
    if name == CLEAN:
        return TestSets.build(rt, data.x_test[clean], data.y_test[clean])
    poisoned = PoisonedData(name)
    test = poisoned.test()
    triggered = keep(len(test["y_true"]))
    return TestSets.build(rt, data.x_test[clean], data.y_test[clean],
                          {"x": test["x"][triggered], "y_true": test["y_true"][triggered]}, poisoned.target)


def read_model(path) -> Classifier:
    require(path)
    return load_model(path)
