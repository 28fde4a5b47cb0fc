"""Input-aware dynamic backdoor (Nguyen & Tran, NeurIPS 2020), turned into a poisoned data set.

A generator G makes a pattern for each image and a mask network M a per-image mask;
the triggered image is x' = x + M(x) * (G(x) - x). The `attacker` stage trains G, M
and a classifier together: in each batch a share p_attack gets its own trigger and
the target label, a share p_cross gets *another* image's trigger and keeps its label
(so a trigger only works on the image it was made for), a diversity loss
||x1 - x2|| / ||G(x1) - G(x2)|| keeps patterns input-specific, and a norm loss keeps
the mean mask below mask_density. Here M trains jointly with G rather than in a
separate first phase. For ABL the trained G and M then stamp a share of the training
set (relabelled to the target), and training starts from scratch on that set.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..layout import ATTACKER
from ..params import rate
from ..runtime import Runtime
from ..storage import load_checkpoint
from .base import Attack, tensor_to_uint8

BATCH = 512


def _block(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, 1, 1), nn.BatchNorm2d(cout), nn.ReLU()]


class EncoderDecoder(nn.Module):
    """Two downsamplings, two upsamplings, back to the input size; sigmoid output in [0, 1]."""

    def __init__(self, cin: int, cout: int, width: int = 16):
        super().__init__()
        self.encoder = nn.Sequential(*_block(cin, width), nn.MaxPool2d(2), *_block(width, 2 * width),
                                     nn.MaxPool2d(2), *_block(2 * width, 2 * width))
        self.decoder = nn.Sequential(nn.Upsample(scale_factor=2), *_block(2 * width, width),
                                     nn.Upsample(scale_factor=2), *_block(width, width),
                                     nn.Conv2d(width, cout, 3, 1, 1))

    def forward(self, x):
        out = self.decoder(self.encoder(x))
        return torch.sigmoid(F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False))


def mix(x: torch.Tensor, mask: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
    """The triggered image x + M * (G - x)."""
    return x + mask * (pattern - x)


class TriggerNets(nn.Module):
    """G (pattern, as many channels as the image) and M (one-channel mask)."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        self.pattern = EncoderDecoder(channels, channels)
        self.mask = EncoderDecoder(channels, 1)

    def stamp(self, x: torch.Tensor, source: torch.Tensor | None = None) -> torch.Tensor:
        """x + M(s) * (G(s) - x) with s = x (own trigger) or another image (cross trigger)."""
        source = x if source is None else source
        return mix(x, self.mask(source), self.pattern(source))

    def checkpoint(self) -> dict:
        return {"channels": self.channels, "state_dict": self.state_dict()}

    @classmethod
    def from_checkpoint(cls, state: dict) -> "TriggerNets":
        nets = cls(state["channels"])
        nets.load_state_dict(state["state_dict"])
        return nets.eval()


def diversity(x: torch.Tensor, out: torch.Tensor, other: torch.Tensor, out_other: torch.Tensor) -> torch.Tensor:
    """||x1 - x2|| / ||G(x1) - G(x2)|| per pair, averaged: small when different inputs get different outputs."""
    inputs = (x - other).flatten(1).norm(dim=1)
    outputs = (out - out_other).flatten(1).norm(dim=1)
    return (inputs / (outputs + 1e-6)).mean()


class AttackerTraining:
    """The batch transform the shared training loop applies while the attacker trains (see module doc)."""

    def __init__(self, nets: TriggerNets, target: int, p_attack: float, p_cross: float, lambda_div: float,
                 mask_density: float, lambda_norm: float):
        self.nets, self.target = nets, target
        self.p_attack, self.p_cross = p_attack, p_cross
        self.lambda_div, self.mask_density, self.lambda_norm = lambda_div, mask_density, lambda_norm

    def __call__(self, x: torch.Tensor, y: torch.Tensor):
        n = len(x)
        n_attack, n_cross = round(self.p_attack * n), round(self.p_cross * n)
        others = torch.roll(torch.arange(n, device=x.device), n // 2)
        other = x[others]
        pattern, mask = self.nets.pattern(x), self.nets.mask(x)
        # The other images are this batch reordered, and batch normalisation's statistics do not depend on the
        # order, so their patterns and masks are these reordered: half the generator's work.
        pattern_other, mask_other = pattern[others], mask[others]
        triggered = mix(x, mask, pattern)
        crossed = mix(x, mask_other, pattern_other)
        inputs = torch.cat([triggered[:n_attack], crossed[n_attack:n_attack + n_cross], x[n_attack + n_cross:]])
        labels = torch.cat([torch.full_like(y[:n_attack], self.target), y[n_attack:]])
        extra = (self.lambda_div * (diversity(x, pattern, other, pattern_other) + diversity(x, mask, other, mask_other))
                 + self.lambda_norm * F.relu(mask.mean() - self.mask_density))
        return inputs, labels, extra


@torch.no_grad()
def apply_nets(nets: TriggerNets, x: np.ndarray, rt: Runtime, source: np.ndarray | None = None) -> np.ndarray:
    """Stamp uint8 images (N, H, W, C) with their own (or `source`'s) generated trigger, in batches."""
    nets.eval()
    out = []
    for start in range(0, len(x), BATCH):
        def batch(images):
            return rt.model_input(rt.tensors(images[start:start + BATCH]))

        out.append(tensor_to_uint8(nets.stamp(batch(x), None if source is None else batch(source))))
    return np.concatenate(out) if out else x.copy()


class InputAware(Attack):
    name = "input_aware"
    knobs = {"ia_rate": rate()}
    rate_knob = "ia_rate"
    inputs = (ATTACKER,)

    def load_inputs(self, threads: int = 0) -> None:
        self.rt = Runtime.pick(threads=threads)
        self.nets = TriggerNets.from_checkpoint(load_checkpoint(ATTACKER)["nets"]).to(self.rt.device)

    def trigger(self, x: np.ndarray) -> np.ndarray:
        return apply_nets(self.nets, x, self.rt)

    def figures(self, x: np.ndarray, y: np.ndarray) -> dict:
        """Like the seed's Figure 5: images, their masks and patterns, and the triggered results."""
        from ..gallery import generated_triggers

        sample = x[np.random.default_rng(self.seed).permutation(len(x))[:8]]
        with torch.no_grad():
            t = self.rt.model_input(self.rt.tensors(sample))
            masks, patterns = tensor_to_uint8(self.nets.mask(t)), tensor_to_uint8(self.nets.pattern(t))
        return {"triggers": generated_triggers(sample, masks, patterns, self.trigger(sample),
                                               f"{self.name}: generated masks and patterns")}


__all__ = ["InputAware", "TriggerNets", "AttackerTraining", "apply_nets"]
