"""The one interface every attack implements, and what the poison stage builds from it.

An attack turns clean uint8 images (N, H, W, C) into triggered ones. It says which
training images it poisons and whether it relabels them (label-flipping attacks
relabel to the target and draw only from non-target images, so that no poisoned
example keeps a correct label) or keeps their labels (clean-label attacks draw
from the target class).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ..params import ParamError, Spec

if TYPE_CHECKING:
    import torch


@dataclass
class PoisonedSets:
    """What the poison stage writes: a training set with known poison indices, and a triggered test set."""

    x_train: np.ndarray
    y_train: np.ndarray       # labels as trained on (poisoned ones relabelled for label-flipping attacks)
    y_train_true: np.ndarray  # the original labels
    poison_indices: np.ndarray
    x_test: np.ndarray        # non-target test images with the trigger
    y_test: np.ndarray        # all the target class
    y_test_true: np.ndarray
    test_indices: np.ndarray  # where those images sit in the clean test set


class Attack(ABC):
    name: ClassVar[str]
    #: knobs this attack reads, as keys under `attack.` in params.yaml
    knobs: ClassVar[dict[str, Spec]] = {}
    #: the knob holding the share of images poisoned
    rate_knob: ClassVar[str]
    #: True: poison a share of the target class and keep labels; False: relabel non-target images
    clean_label: ClassVar[bool] = False
    #: artifacts of earlier stages the attack reads, e.g. a surrogate model (paths relative to dvc.yaml)
    inputs: ClassVar[tuple[str, ...]] = ()

    def __init__(self, knobs: dict[str, Any], target: int, seed: int = 0):
        self.knobs = knobs
        self.target = target
        self.seed = seed

    def load_inputs(self, threads: int = 0) -> None:
        """Read `inputs` before poisoning, to compute on `threads` CPU threads (`train.threads`, since the
        thread count changes the rounding); attacks without inputs have nothing to do."""

    def figures(self, x: np.ndarray, y: np.ndarray) -> dict:
        """Extra pictures for the gallery, {name: matplotlib figure}, from the clean training set."""
        return {}

    @abstractmethod
    def trigger(self, x: np.ndarray) -> np.ndarray:
        """The test-time trigger: uint8 (N, H, W, C) in, uint8 out."""

    def poison(self, x: np.ndarray) -> np.ndarray:
        """The training-time change; the trigger itself unless the attack says otherwise."""
        return self.trigger(x)

    def pattern(self, shape: tuple[int, int, int]) -> np.ndarray:
        """What the trigger adds, as a uint8 picture for galleries: the trigger applied to mid-grey."""
        return self.trigger(np.full((1, *shape), 128, dtype=np.uint8))[0]

    def select(self, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        rate = self.knobs[self.rate_knob]
        if self.clean_label:
            pool = np.flatnonzero(y == self.target)
            count = round(rate * len(pool))
        else:
            pool = np.flatnonzero(y != self.target)
            count = round(rate * len(y))
            if count > len(pool):
                raise ParamError(f"attack.{self.rate_knob}: got {rate} but only {len(pool)} of {len(y)} "
                                 f"training images are outside the target class; allowed: a number in "
                                 f"[0, {len(pool) / len(y):.3f}]")
        return np.sort(rng.choice(pool, size=count, replace=False))

    def make_sets(self, x_train: np.ndarray, y_train: np.ndarray,
                  x_test: np.ndarray, y_test: np.ndarray) -> PoisonedSets:
        rng = np.random.default_rng(self.seed)
        chosen = self.select(y_train, rng)
        x_poisoned = x_train.copy()
        y_poisoned = y_train.copy()
        if len(chosen):
            x_poisoned[chosen] = self.poison(x_train[chosen])
        if not self.clean_label:
            y_poisoned[chosen] = self.target
        test_indices = np.flatnonzero(y_test != self.target)
        return PoisonedSets(
            x_train=x_poisoned, y_train=y_poisoned, y_train_true=y_train.copy(), poison_indices=chosen,
            x_test=self.trigger(x_test[test_indices]), y_test=np.full(len(test_indices), self.target, np.int64),
            y_test_true=y_test[test_indices], test_indices=test_indices)


def to_uint8(x: np.ndarray) -> np.ndarray:
    """Clip to the pixel range in float, then round: no uint8 wrap-around (the reference code's bug)."""
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def tensor_to_uint8(t: "torch.Tensor") -> np.ndarray:
    """Model-input images (N, C, H, W) in [0, 1] back to uint8 (N, H, W, C): the inverse of
    `Runtime.model_input`, rounded and clipped by `to_uint8`."""
    return to_uint8(t.detach().float().permute(0, 2, 3, 1).mul(255).cpu().numpy())
