"""Image classifiers, chosen by the `train.arch` param.

Every model takes pixels in [0, 1] (N, C, H, W) and normalises them itself with
the training set's per-channel mean and std, stored as buffers: triggers, PGD and
evaluation all work in pixel space and the checkpoint carries its normalisation.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .storage import load_checkpoint


class BasicBlock(nn.Module):
    """ResNet's two 3x3 convolutions with an identity (or 1x1 projection) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(nn.Module):
    """The CIFAR variant: a 3x3 stem with stride 1 and no max-pool."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        layers, cin = [], 64
        for cout, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
            layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.layers(self.stem(x)), 1).flatten(1))


class WideBlock(nn.Module):
    """Pre-activation block of a Wide ResNet (BN-ReLU-conv twice)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = None if stride == 1 and cin == cout else nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x):
        pre = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(pre))))
        return out + (x if self.shortcut is None else self.shortcut(pre))


class WideResNet(nn.Module):
    """WRN-depth-k (Zagoruyko & Komodakis); WRN-16-1 is the ABL paper's model."""

    def __init__(self, in_channels: int, num_classes: int, depth: int = 16, width: int = 1):
        super().__init__()
        blocks = (depth - 4) // 6
        widths = [16, 16 * width, 32 * width, 64 * width]
        self.stem = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        layers, cin = [], widths[0]
        for i, cout in enumerate(widths[1:]):
            for b in range(blocks):
                layers.append(WideBlock(cin, cout, (1 if i == 0 else 2) if b == 0 else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(cin)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        out = F.relu(self.bn(self.layers(self.stem(x))))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


class ConvNet(nn.Module):
    """A small three-layer CNN for the demo: ~10x faster than WRN-16-1 on a CPU."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 16):
        super().__init__()

        def conv(cin, cout):
            return [nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

        self.features = nn.Sequential(*conv(in_channels, width), nn.MaxPool2d(2),
                                      *conv(width, 2 * width), nn.MaxPool2d(2), *conv(2 * width, 4 * width))
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


ARCHITECTURES = {
    "resnet18": ResNet18,
    "wrn16-1": lambda c, n: WideResNet(c, n, 16, 1),
    "wrn16-4": lambda c, n: WideResNet(c, n, 16, 4),
    "convnet": ConvNet,
}


class Classifier(nn.Module):
    """A network behind per-channel input normalisation; takes pixels in [0, 1]."""

    def __init__(self, arch: str, in_channels: int, num_classes: int,
                 mean: list[float] | None = None, std: list[float] | None = None):
        super().__init__()
        self.arch = arch
        self.net = ARCHITECTURES[arch](in_channels, num_classes)
        self.register_buffer("mean", torch.tensor(mean or [0.5] * in_channels).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std or [0.25] * in_channels).view(1, -1, 1, 1))
        self.in_channels, self.num_classes = in_channels, num_classes

    def forward(self, x):
        return self.net((x - self.mean) / self.std)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate representation (what the final linear layer sees), for each input."""
        seen = []
        hook = self.net.fc.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
        try:
            self(x)
        finally:
            hook.remove()
        return seen[0]

    def checkpoint(self, **meta) -> dict:
        """Tensors, strings and numbers only, so it reloads with weights_only=True."""
        return {"arch": self.arch, "in_channels": self.in_channels, "num_classes": self.num_classes,
                "state_dict": self.state_dict(), "meta": meta}

    @classmethod
    def from_checkpoint(cls, state: dict) -> "Classifier":
        model = cls(state["arch"], state["in_channels"], state["num_classes"])
        model.load_state_dict(state["state_dict"])
        return model


def new_model(arch: str, x_train: np.ndarray, num_classes: int, seed: int) -> Classifier:
    """A freshly initialised model normalising inputs with the training set's channel statistics."""
    torch.manual_seed(seed)
    pixels = x_train.reshape(-1, x_train.shape[-1]).astype(np.float64) / 255.0
    return Classifier(arch, x_train.shape[-1], num_classes,
                      mean=pixels.mean(0).tolist(), std=(pixels.std(0) + 1e-6).tolist())


def load_model(path: str | Path) -> Classifier:
    return Classifier.from_checkpoint(load_checkpoint(path))
