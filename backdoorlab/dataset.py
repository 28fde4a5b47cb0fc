"""The data set every stage reads: uint8 images (N, H, W, C), int64 labels and class names, in one .npz file.

The `data` stage writes it from a source (sources.py); nothing else needs to know
where the images came from.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .storage import load_arrays, save_arrays


@dataclass
class Dataset:
    x_train: np.ndarray  # (N, H, W, C) uint8
    y_train: np.ndarray  # (N,) int64
    x_test: np.ndarray
    y_test: np.ndarray
    classes: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def save(self, path: str | Path) -> None:
        save_arrays(path, x_train=self.x_train, y_train=self.y_train, x_test=self.x_test,
                    y_test=self.y_test, classes=np.array(self.classes, dtype=str))

    @classmethod
    def load(cls, path: str | Path) -> "Dataset":
        a = load_arrays(path)
        return cls(a["x_train"], a["y_train"], a["x_test"], a["y_test"], [str(c) for c in a["classes"]])
