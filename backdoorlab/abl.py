"""Anti-Backdoor Learning (Li et al., NeurIPS 2021).

Stage 1, isolation: train with the LGA loss for a few epochs so that the training
loss stays near a floor gamma; poisoned examples, learned much faster than clean
ones, end with the lowest losses. Rank every training example by its loss (eval
mode, no augmentation) and isolate the lowest fraction.

Stage 2, unlearning: fine-tune on the other examples, then run gradient *ascent*
on the isolated ones, so the model forgets the trigger -> target shortcut.

Both stages call the shared training loop; only the loss and the data differ.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .training import LossFn, Runtime, TrainingConfig, fit


def lga_loss(gamma: float, per_example: bool) -> LossFn:
    """LGA: sign(l - gamma) * l, so the loss descends above gamma and ascends below it.

    per_example=True applies it to each example's loss (the paper's formula);
    per_example=False to the batch mean (the reference code's "flooding" |l - b| + b,
    which has the same gradient).
    """

    def loss(logits: torch.Tensor, y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        losses = F.cross_entropy(logits, y, reduction="none") * weight
        if per_example:
            return (torch.sign(losses - gamma) * losses).mean()
        mean = losses.mean()
        return torch.sign(mean - gamma) * mean

    return loss


def isolate_lowest(losses: np.ndarray, ratio: float) -> np.ndarray:
    """Indices (sorted) of the lowest-loss fraction `ratio` of the examples; at least one."""
    count = min(len(losses), max(1, round(ratio * len(losses))))
    return np.sort(np.argsort(losses, kind="stable")[:count])


def train_isolation_model(model: nn.Module, x: torch.Tensor, y: torch.Tensor, rt: Runtime, cfg: TrainingConfig,
                          *, epochs: int, lr: float, gamma: float, per_example: bool, schedule: str = "constant",
                          on_epoch: Callable[[int, dict], None] | None = None) -> None:
    fit(model, x, y, rt, cfg, epochs=epochs, lr=lr, schedule=schedule, loss_fn=lga_loss(gamma, per_example),
        on_epoch=on_epoch, desc="isolate (LGA)")


def ascent_loss(cap: float) -> LossFn:
    """Cross-entropy weighted per example; a negative weight ascends, on a loss capped at `cap` (0: no cap).

    The paper ascends on the raw loss, which has no maximum: once the isolated
    examples are unlearned it keeps pushing and wrecks clean accuracy. Capping each
    isolated example's loss stops the push for examples already forgotten.
    """

    def loss(logits: torch.Tensor, y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        losses = F.cross_entropy(logits, y, reduction="none")
        ascending = torch.clamp(losses, max=cap) if cap > 0 else losses
        return torch.where(weight < 0, weight * ascending, weight * losses).mean()

    return loss


def unlearn(model: nn.Module, x: torch.Tensor, y: torch.Tensor, isolated: np.ndarray, rt: Runtime,
            cfg: TrainingConfig, *, finetune_epochs: int, finetune_lr: float, finetune_milestones: list[int],
            epochs: int, lr: float, batch_size: int, loss_cap: float = 0.0, clean_ratio: float = 0.0,
            on_finetune_epoch: Callable[[int, dict], None] | None = None,
            on_unlearn_epoch: Callable[[int, dict], None] | None = None) -> None:
    """Fine-tune on everything but `isolated`, then gradient ascent on `isolated`.

    clean_ratio > 0 keeps a clean-data term: round(clean_ratio * len(isolated)) randomly
    drawn non-isolated examples join the unlearning set with ordinary descent
    (0: the paper's pure ascent).
    """
    keep = np.ones(len(y), dtype=bool)
    keep[isolated] = False
    rest = np.flatnonzero(keep)
    if finetune_epochs:
        rest_t = torch.from_numpy(rest).to(rt.device)
        fit(model, x[rest_t], y[rest_t], rt, cfg, epochs=finetune_epochs, lr=finetune_lr, schedule="step",
            milestones=finetune_milestones, on_epoch=on_finetune_epoch, desc="fine-tune")
    if not epochs:
        return
    clean = np.random.default_rng(cfg.seed).choice(rest, size=min(len(rest), round(clean_ratio * len(isolated))),
                                                   replace=False)
    chosen = torch.from_numpy(np.concatenate([isolated, clean]).astype(np.int64)).to(rt.device)
    weight = torch.cat([-torch.ones(len(isolated)), torch.ones(len(clean))]).to(rt.device)
    fit(model, x[chosen], y[chosen], rt, cfg, epochs=epochs, lr=lr, weight=weight, loss_fn=ascent_loss(loss_cap),
        on_epoch=on_unlearn_epoch, desc="unlearn (ascent)", batch_size=batch_size)
