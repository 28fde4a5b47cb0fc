"""SIG (Barni et al. 2019), clean-label: a horizontal sinusoid added to target-class images.

v(i, j) = delta * sin(2 * pi * j * f / m) over the image width m, the same on every
row and channel. x' = clip(x + v, 0, 255) computed in float and rounded (the
reference code added it in uint8, so -15 became 241). Training images keep their
labels; at test time the signal is added to non-target images.
"""
from __future__ import annotations

import numpy as np

from ..params import number, rate
from .base import Attack, to_uint8


def sig_signal(width: int, delta: float, freq: float) -> np.ndarray:
    """v(j) for j = 0 .. width-1."""
    return delta * np.sin(2 * np.pi * np.arange(width) * freq / width)


class SIG(Attack):
    name = "sig"
    knobs = {"delta": number(0.0, 255.0), "freq": number(0.0, lo_open=True), "sig_fraction": rate()}
    rate_knob = "sig_fraction"
    clean_label = True

    def trigger(self, x: np.ndarray) -> np.ndarray:
        signal = sig_signal(x.shape[2], self.knobs["delta"], self.knobs["freq"])
        return to_uint8(x.astype(np.float64) + signal[None, None, :, None])
