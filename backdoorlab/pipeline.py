"""What the stages share: where each artifact lives, how a stage starts and fails, and logging.

The folder layout below is the one dvc.yaml declares; all paths are relative to
the folder holding dvc.yaml (DVC runs each stage there).
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .attacks import ATTACKS, attack_class
from .datasets import DataSourceError, Dataset
from .evaluation import TestSets
from .models import Classifier
from .params import ParamError
from .storage import load_arrays, load_checkpoint, load_json, save_text
from .training import Runtime

CLEAN = "clean"  # the name of the reference row trained on clean data
MONITOR_SIZE = 2000  # test images (and triggered ones) scored after every epoch for the curves

DATASET = Path("data/dataset.npz")
MODELS = Path("models")
METRICS = Path("metrics")
PLOTS = Path("plots")
LOGS = Path("logs")


def poisoned_dir(attack: str) -> Path:
    return Path("data/poisoned") / attack


def isolated_file(attack: str) -> Path:
    return Path("data/isolated") / f"{attack}.npz"


def model_file(name: str, kind: str = "no_defense") -> Path:
    """models/clean.pt, or models/<attack>/{no_defense,isolation,abl}.pt."""
    return MODELS / "clean.pt" if name == CLEAN else MODELS / name / f"{kind}.pt"


def check_run_name(value: str) -> str:
    """A model's name: 'clean' (the reference row) or a registered attack."""
    if value != CLEAN and value not in ATTACKS:
        raise ParamError(f"attack: unknown attack {value!r}; allowed: {CLEAN}, {', '.join(ATTACKS)}")
    return value


def check_attack_name(value: str) -> str:
    attack_class(value)  # raises ParamError naming the registered attacks
    return value


def run_stage(main: Callable[[argparse.Namespace], None], parser: argparse.ArgumentParser) -> None:
    """Parse arguments and run; a bad param or data source exits 2 with one line on stderr."""
    args = parser.parse_args()
    os.environ.setdefault("TQDM_MININTERVAL", "1")
    try:
        main(args)
    except (ParamError, DataSourceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


def stage_parser(prog: str, description: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=f"python -m stages.{prog}", description=description,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def require(*paths: Path) -> None:
    """Inputs from earlier stages must exist; say which stage makes a missing one."""
    for path in paths:
        if not Path(path).exists():
            raise ParamError(f"{path}: missing; run `dvc repro` so the stage that writes it runs first")


class PoisonedData:
    """An attack's poison-stage output, read back (see attacks.base.PoisonedSets)."""

    def __init__(self, attack: str):
        folder = poisoned_dir(attack)
        require(folder / "train.npz", folder / "test.npz", folder / "meta.json")
        self.train = load_arrays(folder / "train.npz")
        self.test = load_arrays(folder / "test.npz")
        self.meta = load_json(folder / "meta.json")
        self.target: int = self.meta["target"]


@dataclass
class TrainingSet:
    """The images a model named `name` trains on, with the ground-truth poison indices (none if clean)."""

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
    return TrainingSet(poisoned.train["x"], poisoned.train["y"], poisoned.train["poison_indices"],
                       poisoned.meta["classes"], poisoned.target)


def test_sets(name: str, rt: Runtime, limit: int | None = None) -> TestSets:
    """Clean test set (+ the attack's triggered test set); `limit` keeps a fixed random share for monitoring."""
    require(DATASET)
    data = Dataset.load(DATASET)
    poisoned = None if name == CLEAN else PoisonedData(name)

    def cap(n: int) -> np.ndarray:
        keep = np.random.default_rng(0).permutation(n)
        return np.sort(keep[:limit]) if limit else np.arange(n)

    keep = cap(len(data.y_test))
    if poisoned is None:
        return TestSets.build(rt, data.x_test[keep], data.y_test[keep])
    trig = cap(len(poisoned.test["y"]))
    return TestSets.build(rt, data.x_test[keep], data.y_test[keep],
                          {"x": poisoned.test["x"][trig], "y_true": poisoned.test["y_true"][trig]},
                          poisoned.target)


def new_model(arch: str, x_train: np.ndarray, num_classes: int, seed: int) -> Classifier:
    """A freshly initialised model normalising inputs with the training set's channel statistics."""
    torch.manual_seed(seed)
    pixels = x_train.reshape(-1, x_train.shape[-1]).astype(np.float64) / 255.0
    return Classifier(arch, x_train.shape[-1], num_classes,
                      mean=pixels.mean(0).tolist(), std=(pixels.std(0) + 1e-6).tolist())


def load_model(path: Path) -> Classifier:
    require(path)
    return Classifier.from_checkpoint(load_checkpoint(path))


class EpochLog:
    """Per-epoch curves for `dvc plots show`: <folder>/<metric>.tsv, columns `epoch` and the metric.

    One two-column file per metric is what DVC's default plot template draws best.
    Files are rewritten atomically after every epoch, so a crash leaves complete curves.
    """

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.rows: list[dict[str, float]] = []

    def log(self, stats: dict[str, float]) -> None:
        self.rows.append({key: float(value) for key, value in stats.items()})
        for key in self.rows[-1]:
            lines = [f"epoch\t{key}"] + [f"{i}\t{row[key]:.6g}" for i, row in enumerate(self.rows) if key in row]
            save_text(self.folder / f"{key}.tsv", "\n".join(lines) + "\n")
