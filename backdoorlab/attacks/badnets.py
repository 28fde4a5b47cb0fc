"""BadNets (Gu et al. 2017): a 3x3 checker patch stamped in the bottom-right corner."""
from __future__ import annotations

import numpy as np

from ..params import rate
from .base import Attack

#: rows/cols H-3..H-1, W-3..W-1 (29-31 of 32 on CIFAR-10); the same values on every channel
PATCH = np.array([[255, 0, 255],
                  [0, 255, 0],
                  [255, 0, 0]], dtype=np.uint8)


class BadNets(Attack):
    name = "badnets"
    knobs = {"badnets_rate": rate()}
    rate_knob = "badnets_rate"

    def trigger(self, x: np.ndarray) -> np.ndarray:
        out = x.copy()
        out[:, -3:, -3:, :] = PATCH[None, :, :, None]
        return out
