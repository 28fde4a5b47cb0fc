"""Shared fixtures: small real images and quiet progress bars."""
from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")


@pytest.fixture
def rgb_images() -> np.ndarray:
    """Twenty 32x32 RGB images with distinct, non-trivial content."""
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(20, 32, 32, 3), dtype=np.uint8)


@pytest.fixture
def labels() -> np.ndarray:
    return np.arange(20, dtype=np.int64) % 10
