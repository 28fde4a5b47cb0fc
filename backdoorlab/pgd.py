"""Projected gradient descent (Madry et al. 2018): perturbations that raise a model's loss.

Pixels are in [0, 1] here; eps and step sizes are given in 0..255 units by the params
and divided by 255 by the caller. l_inf steps follow the gradient's sign and clip to
the eps-box; l2 steps follow the normalised gradient and project onto the eps-ball.
Every iterate is also clipped to the valid pixel range.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _per_image_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (t.dim() - 1))


def project(delta: torch.Tensor, norm: str, eps: float) -> torch.Tensor:
    if norm == "linf":
        return delta.clamp(-eps, eps)
    return delta * torch.clamp(eps / _per_image_norm(delta), max=1.0)


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, norm: str, eps: float, step: float, steps: int,
        random_start: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
    """Maximise cross-entropy of labels `y` within the eps-ball around `x` ((N, C, H, W) in [0, 1])."""
    was_training = model.training
    model.eval()
    delta = torch.zeros_like(x)
    if random_start:
        noise = torch.rand(x.shape, device=x.device, generator=generator) * 2 - 1
        delta = project(noise * eps if norm == "linf" else noise, norm, eps)
    delta = (x + delta).clamp(0, 1) - x
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = F.cross_entropy(model(x + delta), y)
        (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            move = grad.sign() if norm == "linf" else grad / _per_image_norm(grad)
            delta = project(delta + step * move, norm, eps)
            delta = (x + delta).clamp(0, 1) - x
    model.train(was_training)
    return (x + delta).detach()
