"""ABL's first phase (Li et al., NeurIPS 2021), shared by both ABL defenses: isolation.

A model learns poisoned examples much faster than clean ones, and a backdoor ties them
to one target class. The `isolate` stage trains a fresh model with the LGA loss and
isolates the examples it learned suspiciously fast; each ABL defense (abl.py) then
unlearns them. Kept apart from the unlearning so that changing it leaves the isolate
stage's outputs valid.

The paper's rule (`isolate.selection: lowest`): the lowest `isolate.ratio` (1%) of
per-example losses after T_te epochs.

This project's rule (`isolate.selection: adaptive`), every choice made on training data:

- Isolation trains without augmentation, as the paper does: a shifted or cut corner
  trigger is learned later, and then not at all within a short isolation budget.
- Every example's loss is recorded as training sees it, each epoch, at no extra cost
  (saved as `history`); its mean log loss over the last `isolate.window` epochs is its
  learning speed. One epoch alone is noise: the LGA loss makes the model swing, and a
  whole easy class can dip for an epoch (MNIST's ones). Every epoch since the first
  dilutes a trigger learned late with the epochs before it, when the poisoned examples,
  images of other classes, had the highest losses (CIFAR-10 clean-label, seed 0: its
  poison learned from epoch 4 on, the label's share of the fastest never passed 0.78 in
  12 epochs; over the last 3 epochs it reached 0.94 in epoch 6). A backdoor is learned
  by one label, so among the fastest `isolate.ratio` of the data one label comes to
  dominate; on clean data the fastest are spread over the
  easy classes. Isolation stops at the first epoch (from the second on) where one label
  holds `isolate.min_concentration` of the fastest, and isolates those of that label.
  If no epoch does, it isolates nothing and says so in its metrics, rather than
  unlearning arbitrary clean images. Neither the rate nor the target class enters.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..runtime import Runtime
from ..training import LossFn, TrainOptions, per_example_losses, sgd, train_epoch

FINETUNED = "finetuned"  # the phase-1 model both ABL defenses start from: models/<attack>/seed<k>/finetuned.pt
Log = Callable[[nn.Module, dict], None]


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
    """Indices (sorted) of the lowest-loss fraction `ratio` of the examples; at least one (the paper's rule)."""
    count = min(len(losses), max(1, round(ratio * len(losses))))
    return np.sort(np.argsort(losses, kind="stable")[:count])


def learning_speed(history: list[np.ndarray], window: int = 0) -> np.ndarray:
    """Each example's mean log10 loss, as training saw it, over the last `window` isolation epochs (0: all),
    the first epoch left out once there are others (it starts from a random model). Low: learned fast and
    kept learned."""
    recent = history[1:] if len(history) > 1 else history
    logs = np.log10(np.stack(recent[-window:] if window else recent) + 1e-8)
    return logs.mean(0)


@dataclass
class Candidates:
    """The fastest-learned `ratio` of the training set, and how much one label dominates it."""

    indices: np.ndarray  # the fastest-learned examples, fastest first
    label: int  # their most common label
    concentration: float  # the share of that label among them
    gap: float  # decades between the median speed of that label's candidates and of the rest of that label


def candidates(speed: np.ndarray, y: np.ndarray, ratio: float) -> Candidates:
    count = min(len(speed), max(1, round(ratio * len(speed))))
    fastest = np.argsort(speed, kind="stable")[:count]
    counts = np.bincount(y[fastest])
    label = int(np.argmax(counts))
    mine = fastest[y[fastest] == label]
    rest = np.setdiff1d(np.flatnonzero(y == label), mine)
    gap = float(np.median(speed[rest]) - np.median(speed[mine])) if len(rest) else 0.0
    return Candidates(fastest, label, float(counts[label] / count), gap)


def decide(history: list[np.ndarray], labels: np.ndarray, cfg: "IsolationConfig") -> tuple[Candidates, bool]:
    """The adaptive rule after the epochs in `history`: the candidates, and whether they count as a backdoor
    (from the second epoch on: one label holds `min_concentration` of the fastest)."""
    cand = candidates(learning_speed(history, cfg.window), labels, cfg.ratio)
    return cand, cfg.selection == "adaptive" and len(history) >= 2 and cand.concentration >= cfg.min_concentration


@dataclass
class Isolation:
    indices: np.ndarray  # isolated examples, sorted
    losses: np.ndarray  # every example's loss (eval mode) when isolation stopped
    speed: np.ndarray  # every example's learning speed (see learning_speed) when isolation stopped
    history: np.ndarray  # (epochs, examples): each example's loss as training saw it, per isolation epoch
    epochs: int  # isolation epochs trained
    found: bool  # adaptive: a group dominated by one label was found; lowest: always True
    candidates: Candidates  # when isolation stopped


@dataclass(frozen=True)
class IsolationConfig:
    max_epochs: int
    lr: float
    gamma: float
    per_example: bool
    augment: str
    selection: str  # adaptive | lowest
    ratio: float  # the share examined (adaptive) or isolated (lowest)
    min_concentration: float  # adaptive: the share of one label among the fastest that counts as a backdoor
    window: int  # the learning speed's epochs: the last `window` (0: every epoch from the second on)

    @classmethod
    def from_params(cls, p: dict) -> "IsolationConfig":
        return cls(p["isolate.max_epochs"], p["isolate.lr"], p["isolate.gamma"], p["isolate.lga"] == "per_example",
                   p["isolate.augment"], p["isolate.selection"], p["isolate.ratio"], p["isolate.min_concentration"],
                   p["isolate.window"])


def isolate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, rt: Runtime, opts: TrainOptions,
            cfg: IsolationConfig, log: Log) -> Isolation:
    """Train `model` with LGA at a constant lr (the paper's), and isolate (see the module's notes)."""
    opts = opts.replace(epochs=cfg.max_epochs, lr=cfg.lr, schedule="constant", augment=cfg.augment)
    gen = torch.Generator(device=rt.device).manual_seed(opts.seed)
    optimizer = sgd(model, opts)
    labels = y.cpu().numpy()
    seen = torch.zeros(len(y), device=rt.device)
    history: list[np.ndarray] = []
    for epoch in range(cfg.max_epochs):
        stats = train_epoch(model, x, y, optimizer, rt, opts, gen, lga_loss(cfg.gamma, cfg.per_example),
                            desc=f"isolate {epoch + 1}/{cfg.max_epochs}", example_losses=seen)
        history.append(seen.cpu().numpy().copy())
        cand, found = decide(history, labels, cfg)
        log(model, {"lr": cfg.lr, "train_loss": stats["loss"], "train_acc": stats["acc"],
                    "concentration": cand.concentration, "label": cand.label, "gap": cand.gap})
        if found:
            break
    losses = per_example_losses(model, x, y, rt).cpu().numpy()
    speed, trace = learning_speed(history, cfg.window), np.stack(history).astype(np.float32)
    if cfg.selection == "lowest":
        return Isolation(isolate_lowest(losses, cfg.ratio), losses, speed, trace, len(history), True, cand)
    chosen = cand.indices[labels[cand.indices] == cand.label] if found else np.zeros(0, dtype=np.int64)
    return Isolation(np.sort(chosen), losses, speed, trace, len(history), found, cand)
