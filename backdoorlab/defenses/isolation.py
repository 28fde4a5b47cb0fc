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
- A trigger learned slowly, or a target class with easy clean look-alikes, keeps the
  fastest examples mixed (the target's poison is fast, but MNIST's ones or CIFAR-10's
  automobiles are faster). A second signal then speaks (`isolate.drop`): each example's
  fall in log loss from the second epoch to its learning speed. A poisoned example is an
  image of another class: hard for the label at first, fitted once the trigger is
  learned; a clean class's hard examples are fitted one by one and spread over the
  labels. From the fourth epoch on (two epochs after the reference one), one label
  holding `isolate.min_concentration` of the `isolate.ratio` largest falls counts the
  same way, and those of that label are isolated. On recorded histories of CIFAR-10
  BadNets at 5% on classes 0, 3 and 7 it found the poison on 5 runs of 6 (the speed
  alone on 1), at precision 100%; on clean data one label never held more than 0.68 of
  the largest falls (MNIST) or 0.61 (CIFAR-10).
- Either way the label's candidates must also stand apart from the rest of their label:
  their median signal at least `isolate.min_gap` decades from the rest's. Poison is
  learned by another mechanism than its label's own images, so it stands apart (0.92 to
  1.8 decades on the development histories); an easy class's fastest examples are only
  a little faster than the rest of that class (MNIST's ones held 0.95 of the fastest,
  0.63 decades apart, in a held-out sweep: target 2 at 3%, seed 2).
- If neither signal singles out a label, it isolates nothing and says so in its metrics,
  rather than unlearning arbitrary clean images. Neither the rate nor the target class
  enters.
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


DROP_FROM = 4  # epochs before the loss drop is read: two after the second, its reference


def learning_speed(history: list[np.ndarray], window: int = 0) -> np.ndarray:
    """Each example's mean log10 loss, as training saw it, over the last `window` isolation epochs (0: all),
    the first epoch left out once there are others (it starts from a random model). Low: learned fast and
    kept learned."""
    recent = history[1:] if len(history) > 1 else history
    logs = np.log10(np.stack(recent[-window:] if window else recent) + 1e-8)
    return logs.mean(0)


def loss_drop(history: list[np.ndarray], window: int = 0) -> np.ndarray:
    """Each example's fall, in decades, from its loss in the second epoch to its learning speed. High: hard
    for its label at first, fitted now."""
    return np.log10(history[min(1, len(history) - 1)] + 1e-8) - learning_speed(history, window)


@dataclass
class Candidates:
    """The most suspect `ratio` of the training set by one signal, and how much one label dominates it."""

    indices: np.ndarray  # the most suspect examples, most suspect first
    label: int  # their most common label
    concentration: float  # the share of that label among them
    gap: float  # decades between the median signal of that label's candidates and of the rest of that label
    signal: str = "speed"  # speed: learned fastest | drop: largest fall in loss since the second epoch


def candidates(suspicion: np.ndarray, y: np.ndarray, ratio: float, signal: str = "speed") -> Candidates:
    """The `ratio` examples with the lowest `suspicion` (a learning speed: low is fast; or a negated drop)."""
    count = min(len(suspicion), max(1, round(ratio * len(suspicion))))
    suspects = np.argsort(suspicion, kind="stable")[:count]
    counts = np.bincount(y[suspects])
    label = int(np.argmax(counts))
    mine = suspects[y[suspects] == label]
    rest = np.setdiff1d(np.flatnonzero(y == label), mine)
    gap = float(np.median(suspicion[rest]) - np.median(suspicion[mine])) if len(rest) else 0.0
    return Candidates(suspects, label, float(counts[label] / count), gap, signal)


@dataclass
class Decision:
    """The adaptive rule after some epochs: the candidates it would isolate, whether they count as a backdoor,
    and each signal's concentration (for the curves)."""

    candidates: Candidates
    found: bool
    shares: dict[str, float]


def decide(history: list[np.ndarray], labels: np.ndarray, cfg: "IsolationConfig") -> Decision:
    """From the second epoch on: one label holds `min_concentration` of the fastest, `min_gap` decades ahead
    of the rest of that label; failing that, with `cfg.drop` and from epoch DROP_FROM on, the same of the
    largest falls in loss."""
    adaptive = cfg.selection == "adaptive" and len(history) >= 2

    def backdoor(cand: Candidates) -> bool:
        return adaptive and cand.concentration >= cfg.min_concentration and cand.gap >= cfg.min_gap

    fast = candidates(learning_speed(history, cfg.window), labels, cfg.ratio, "speed")
    shares = {"speed": fast.concentration}
    if backdoor(fast):
        return Decision(fast, True, shares)
    if cfg.drop and len(history) >= DROP_FROM:
        fell = candidates(-loss_drop(history, cfg.window), labels, cfg.ratio, "drop")
        shares["drop"] = fell.concentration
        if backdoor(fell):
            return Decision(fell, True, shares)
    return Decision(fast, False, shares)


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
    drop: bool  # adaptive: also read the fall in loss since the second epoch (see the module's notes)
    min_gap: float  # adaptive: decades the candidates' median signal must stand from the rest of their label

    @classmethod
    def from_params(cls, p: dict) -> "IsolationConfig":
        return cls(p["isolate.max_epochs"], p["isolate.lr"], p["isolate.gamma"], p["isolate.lga"] == "per_example",
                   p["isolate.augment"], p["isolate.selection"], p["isolate.ratio"], p["isolate.min_concentration"],
                   p["isolate.window"], p["isolate.drop"], p["isolate.min_gap"])


def finetune_holdout(size: int, isolated: np.ndarray, share: float, seed: int) -> np.ndarray:
    """Indices (sorted) of a random `share` of the examples not isolated, which the fine-tuning leaves out.

    The unlearning's stop rule measures its cost on clean examples it never trains on. Examples the
    fine-tuning fitted are no such measure: on the reference schedule (CIFAR-10, 10 fine-tuning epochs)
    one unlearning epoch cost 7 points of test accuracy while fitted held-out examples lost nothing.
    """
    rest = np.setdiff1d(np.arange(size), isolated)
    rng = np.random.default_rng([seed, 0x401D])  # its own stream: the training's generators stay as they were
    return np.sort(rng.choice(rest, size=round(share * len(rest)), replace=False))


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
        decision = decide(history, labels, cfg)
        cand, found = decision.candidates, decision.found
        log(model, {"lr": cfg.lr, "train_loss": stats["loss"], "train_acc": stats["acc"],
                    "concentration": decision.shares["speed"], "drop_concentration": decision.shares.get("drop", 0.0),
                    "label": cand.label, "gap": cand.gap})
        if found:
            break
    losses = per_example_losses(model, x, y, rt).cpu().numpy()
    speed, trace = learning_speed(history, cfg.window), np.stack(history).astype(np.float32)
    if cfg.selection == "lowest":
        return Isolation(isolate_lowest(losses, cfg.ratio), losses, speed, trace, len(history), True, cand)
    chosen = cand.indices[labels[cand.indices] == cand.label] if found else np.zeros(0, dtype=np.int64)
    return Isolation(np.sort(chosen), losses, speed, trace, len(history), found, cand)
