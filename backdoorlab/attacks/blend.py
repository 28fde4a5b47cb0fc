"""Blend (Chen et al. 2017): x' = (1 - alpha) * x + alpha * k with one fixed key image k.

The key is a seeded uniform-noise pattern unless `attack.blend_key` names an image
file (resized to the data's size). One key for every image: the reference code's
"Blend" drew fresh noise per image, which is not the attack.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..params import ParamError, number, rate, text
from .base import Attack, to_uint8


def blend(x: np.ndarray, key: np.ndarray, alpha: float) -> np.ndarray:
    return to_uint8((1.0 - alpha) * x.astype(np.float64) + alpha * key.astype(np.float64))


class Blend(Attack):
    name = "blend"
    knobs = {"blend_rate": rate(), "blend_alpha": number(0.0, 1.0), "blend_test_alpha": number(0.0, 1.0),
             "blend_key": text(r".*", "empty (a seeded random pattern) or the path of an image file")}
    rate_knob = "blend_rate"

    def key(self, shape: tuple[int, int, int]) -> np.ndarray:
        """The key image k, uint8 (H, W, C)."""
        height, width, channels = shape
        if not self.knobs["blend_key"]:
            return np.random.default_rng([self.seed, 0xB1E]).integers(0, 256, size=shape, dtype=np.uint8)
        path = Path(self.knobs["blend_key"])
        if not path.is_file():
            raise ParamError(f"attack.blend_key: {str(path)!r} is not a file; allowed: empty (a seeded random "
                             "pattern) or the path of an image file")
        with Image.open(path) as img:
            img = img.convert("L" if channels == 1 else "RGB").resize((width, height), Image.BILINEAR)
            array = np.asarray(img, dtype=np.uint8)
        return array.reshape(height, width, channels)

    def poison(self, x: np.ndarray) -> np.ndarray:
        return blend(x, self.key(x.shape[1:]), self.knobs["blend_alpha"])

    def trigger(self, x: np.ndarray) -> np.ndarray:
        return blend(x, self.key(x.shape[1:]), self.knobs["blend_test_alpha"])
