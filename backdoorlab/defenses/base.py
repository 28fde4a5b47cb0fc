"""The one interface every defense implements, and what its stage hands it.

A defense gets the poisoned training set as it is (images and labels; never the
poison indices, the trigger or any test image), the artifacts of earlier stages it
names in `inputs`, and a `log` callback for its per-epoch curves. `log` also scores
the test sets for those curves, but returns nothing: no choice inside a defense can
depend on test data. It returns the defended model and a summary of what it did.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from ..params import Spec
from ..runtime import Runtime
from ..training import TrainOptions


@dataclass
class DefenseJob:
    attack: str
    seed: int
    x: torch.Tensor  # uint8 (N, H, W, C) on the device: the training set as the attacker left it
    y: torch.Tensor  # labels as given
    num_classes: int
    rt: Runtime
    train: TrainOptions  # the no-defense training options (model, optimiser, augmentation)
    arch: str
    log: Callable[[nn.Module, dict], None] = field(default=lambda model, stats: None)


class Defense(ABC):
    #: knobs this defense reads, as keys under its params group `<name>.` in params.yaml
    knobs: ClassVar[dict[str, Spec]] = {}

    def __init__(self, name: str, knobs: dict[str, Any]):
        self.name = name
        self.knobs = knobs

    @abstractmethod
    def inputs(self, attack: str, seed: int) -> list[Path]:
        """Artifacts of earlier stages this defense reads for one attack and seed."""

    @abstractmethod
    def defend(self, job: DefenseJob) -> tuple[nn.Module, dict]:
        """The defended model and a summary (numbers and strings) of what the defense did."""
