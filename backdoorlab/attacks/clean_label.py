"""Clean-label / label-consistent backdoor (Turner et al. 2019).

Target-class training images are first made hard to classify with PGD against a
surrogate model (the `surrogate` stage trains it, adversarially by default), then a
trigger is stamped on them; their labels stay correct. The model can only fit these
images through the trigger, which it then associates with the target class. At test
time the trigger alone is stamped on non-target images.

Trigger: a 3x3 checkerboard in each of the four corners; a pixel of the pattern
moves the image by +amplitude (white squares) or -amplitude (black squares), then is
clipped, so amplitude 255 gives the plain black-and-white pattern and smaller values
the reduced-amplitude triggers of Turner et al.
"""
from __future__ import annotations

import numpy as np
import torch

from ..layout import SURROGATE
from ..models import load_model
from ..params import boolean, choice, integer, number, rate
from ..pgd import pgd
from ..runtime import Runtime
from .base import Attack, tensor_to_uint8, to_uint8

CHECKER = np.array([[1, 0, 1], [0, 1, 0], [1, 0, 1]], dtype=np.float64)
PGD_BATCH = 256


def corner_trigger(x: np.ndarray, amplitude: float) -> np.ndarray:
    out = x.astype(np.float64)
    shift = amplitude * (2 * CHECKER - 1)[:, :, None]
    for rows in (slice(0, 3), slice(-3, None)):
        for cols in (slice(0, 3), slice(-3, None)):
            out[:, rows, cols, :] += shift
    return to_uint8(out)


class CleanLabel(Attack):
    name = "clean_label"
    knobs = {"cl_fraction": rate(), "cl_norm": choice("linf", "l2"), "cl_eps": number(0.0),
             "cl_step": number(0.0, lo_open=True), "cl_steps": integer(0), "cl_random_start": boolean(),
             "cl_amplitude": number(0.0, 255.0)}
    rate_knob = "cl_fraction"
    clean_label = True
    inputs = (SURROGATE,)

    def load_inputs(self, threads: int = 0) -> None:
        self.rt = Runtime.pick(threads=threads)
        self.surrogate = self.rt.prepare(load_model(SURROGATE))

    def perturb(self, x: np.ndarray, y: np.ndarray, norm: str, eps: float, step: float, steps: int) -> np.ndarray:
        """PGD away from the true labels `y` against the surrogate; eps and step in 0..255 units."""
        gen = torch.Generator(device=self.rt.device).manual_seed(self.seed)
        out = []
        for start in range(0, len(x), PGD_BATCH):
            xb, yb = self.rt.tensors(x[start:start + PGD_BATCH], y[start:start + PGD_BATCH])
            adv = pgd(self.surrogate, self.rt.model_input(xb).contiguous(), yb, norm=norm, eps=eps / 255,
                      step=step / 255, steps=steps, random_start=self.knobs["cl_random_start"], generator=gen)
            out.append(tensor_to_uint8(adv))
        return np.concatenate(out) if out else x.copy()

    def poison(self, x: np.ndarray) -> np.ndarray:
        k = self.knobs
        labels = np.full(len(x), self.target, dtype=np.int64)  # clean-label: they are target-class images
        hard = self.perturb(x, labels, k["cl_norm"], k["cl_eps"], k["cl_step"], k["cl_steps"])
        return corner_trigger(hard, k["cl_amplitude"])

    def trigger(self, x: np.ndarray) -> np.ndarray:
        return corner_trigger(x, self.knobs["cl_amplitude"])

    def figures(self, x: np.ndarray, y: np.ndarray) -> dict:
        """Like the seed's Figure 1: one target image under l2 and l_inf perturbations of growing size."""
        from ..gallery import eps_sweep

        image = x[np.flatnonzero(y == self.target)[:1]]
        target = np.full(1, self.target, dtype=np.int64)
        rows = {}
        for norm, sizes in (("l2", (300, 600, 1200)), ("linf", (8, 16, 32))):
            rows[norm] = [(eps, self.perturb(image, target, norm, eps, 2.5 * eps / 100, 100)[0]) for eps in sizes]
        return {"eps": eps_sweep(image[0], rows, f"{self.name}: PGD on one target image (100 steps)")}
