"""The one training loop, shared by every stage, attack and defense.

Data stays on the device as uint8 (N, H, W, C) tensors; each batch is cropped and
flipped there, converted to [0, 1] floats and fed to the model. What differs between
plain training, ABL's isolation and unlearning, adversarial training and the
input-aware attacker is only the loss, the per-example weights, a batch transform
and the data passed in. Learning-rate schedules are torch's, stepped once per epoch.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .runtime import Runtime

# (logits, labels, per-example weights) -> scalar; a negative weight turns descent into ascent
LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
# (model input in [0, 1], labels) -> (new input, new labels, extra loss or None), applied to each batch after
# augmentation: adversarial training perturbs the input, the input-aware attacker stamps generated triggers
BatchTransform = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]
EVAL_BATCH = 512
SCHEDULES = ("cosine", "step", "constant")
AUGMENTS = ("crop_flip", "crop", "flip", "none")


@dataclass(frozen=True)
class TrainOptions:
    """How one model is trained: optimiser, schedule, batches and augmentation."""

    epochs: int
    lr: float
    batch_size: int = 128
    schedule: str = "cosine"  # cosine (to zero) | step (x0.1 at each milestone) | constant
    milestones: tuple[int, ...] = ()
    momentum: float = 0.9
    weight_decay: float = 5e-4
    augment: str = "crop_flip"  # crop_flip | crop | flip | none, done in batches on the device
    label_smoothing: float = 0.0  # the share of each target spread over every class (Szegedy et al. 2016)
    seed: int = 0

    def replace(self, **changes) -> "TrainOptions":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_params(cls, p: dict, seed: int, **changes) -> "TrainOptions":
        """The `train.*` values in `p` (as params.load returns them) that name a field, with `changes` on top."""
        fields = {f.name: p[f"train.{f.name}"] for f in dataclasses.fields(cls) if f"train.{f.name}" in p}
        if "milestones" in fields:
            fields["milestones"] = tuple(fields["milestones"])
        return cls(**{"epochs": 1, "lr": 0.1, **fields, "seed": seed, **changes})


@dataclass
class Throughput:
    """Images trained on and seconds spent, for the benchmark's per-phase figures."""

    images: int = 0
    seconds: float = 0.0


THROUGHPUT = Throughput()  # accumulated by every fit() in this process


def augment(xb: torch.Tensor, mode: str, gen: torch.Generator, pad: int | None = None) -> torch.Tensor:
    """Random crop with zero padding and (crop_flip) horizontal flip, or (flip) the flip alone, for a whole
    uint8 batch."""
    if mode == "none":
        return xb
    if mode == "flip":
        flip = torch.rand(len(xb), device=xb.device, generator=gen) < 0.5
        return torch.where(flip[:, None, None, None], xb.flip(2), xb)
    n, h, w, _ = xb.shape
    pad = max(1, round(h / 8)) if pad is None else pad  # 4 pixels on 32x32 images
    padded = F.pad(xb, (0, 0, pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), device=xb.device, generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), device=xb.device, generator=gen)
    rows = (dy[:, None] + torch.arange(h, device=xb.device))[:, :, None]
    cols = (dx[:, None] + torch.arange(w, device=xb.device))[:, None, :]
    out = padded[torch.arange(n, device=xb.device)[:, None, None], rows, cols]
    if mode == "crop_flip":
        flip = torch.rand(n, device=xb.device, generator=gen) < 0.5
        out = torch.where(flip[:, None, None, None], out.flip(2), out)
    return out


def batches(n: int, batch_size: int, gen: torch.Generator | None, device) -> Iterator[torch.Tensor]:
    order = torch.randperm(n, device=device, generator=gen) if gen is not None else torch.arange(n, device=device)
    for start in range(0, n, batch_size):
        yield order[start:start + batch_size]


def cross_entropy(logits: torch.Tensor, y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return (F.cross_entropy(logits, y, reduction="none") * weight).mean()


def smoothed_cross_entropy(share: float) -> LossFn:
    """The plain loss with label smoothing: the target is 1 - share on the label plus share / classes on every
    class. Share 0 is `cross_entropy` itself, so a model trained without smoothing is trained as before."""
    if share == 0.0:
        return cross_entropy

    def loss(logits: torch.Tensor, y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return (F.cross_entropy(logits, y, reduction="none", label_smoothing=share) * weight).mean()
    return loss


def sgd(model: nn.Module, opts: TrainOptions) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=opts.lr, momentum=opts.momentum, weight_decay=opts.weight_decay)


def scheduler(optimizer: torch.optim.Optimizer, opts: TrainOptions) -> torch.optim.lr_scheduler.LRScheduler:
    """torch's schedulers, stepped once per epoch: cosine to zero, x0.1 at milestones, or constant."""
    if opts.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(opts.epochs, 1))
    if opts.schedule == "step":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(opts.milestones), gamma=0.1)
    return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)


def train_epoch(model: nn.Module, x: torch.Tensor, y: torch.Tensor, optimizer: torch.optim.Optimizer,
                rt: Runtime, opts: TrainOptions, gen: torch.Generator, loss_fn: LossFn | None = None,
                weight: torch.Tensor | None = None, batch_transform: BatchTransform | None = None,
                extra_optimizers: Sequence[torch.optim.Optimizer] = (), desc: str = "train",
                example_losses: torch.Tensor | None = None, frozen_norm: bool = False) -> dict[str, float]:
    """One pass over (x, y) in random order; returns the mean loss and accuracy seen while training.

    `loss_fn` defaults to the plain cross-entropy, smoothed by `opts.label_smoothing`.

    `example_losses` (N floats), when given, receives each example's cross-entropy as the model saw it in
    this pass, before its own update: a free per-example learning signal (ABL's isolation reads it).
    `frozen_norm` keeps batch normalisation in eval mode (its running statistics neither used per batch nor
    updated): small, unusual batches such as unlearning's then cannot shift what every input is normalised by."""
    model.train(not frozen_norm)
    loss_fn = smoothed_cross_entropy(opts.label_smoothing) if loss_fn is None else loss_fn
    weight = torch.ones(len(y), device=rt.device) if weight is None else weight
    optimizers = [optimizer, *extra_optimizers]
    total_loss, correct, seen = 0.0, 0, 0
    start = time.perf_counter()
    bar = tqdm(total=len(y), desc=desc, unit="img", leave=False, mininterval=1.0)
    for idx in batches(len(y), opts.batch_size, gen, rt.device):
        xb = rt.model_input(augment(x[idx], opts.augment, gen))
        yb, extra = y[idx], None
        if batch_transform is not None:
            xb, yb, extra = batch_transform(xb, yb)
        with rt.amp():
            logits = model(xb)
        loss = loss_fn(logits.float(), yb, weight[idx])
        if extra is not None:
            loss = loss + extra
        if example_losses is not None:
            example_losses[idx] = F.cross_entropy(logits.detach().float(), yb, reduction="none")
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{desc}: the loss became {loss.item()}; lower the learning rate")
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        for opt in optimizers:
            opt.step()
        total_loss += loss.item() * len(idx)
        correct += (logits.argmax(1) == yb).sum().item()
        seen += len(idx)
        bar.update(len(idx))
        bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{correct / seen:.3f}", refresh=False)
    bar.close()
    THROUGHPUT.images += seen
    THROUGHPUT.seconds += time.perf_counter() - start
    return {"loss": total_loss / max(seen, 1), "acc": correct / max(seen, 1)}


def fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, rt: Runtime, opts: TrainOptions, *,
        loss_fn: LossFn | None = None, weight: torch.Tensor | None = None,
        batch_transform: BatchTransform | None = None, extra_optimizers: Sequence[torch.optim.Optimizer] = (),
        on_epoch: Callable[[int, dict], bool | None] | None = None, desc: str = "train") -> torch.optim.Optimizer:
    """Train for opts.epochs passes. `on_epoch(epoch, stats)` sees each epoch's lr, loss and accuracy on the
    training data and may return True to stop early. `extra_optimizers` step alongside the model's SGD."""
    gen = torch.Generator(device=rt.device)
    gen.manual_seed(opts.seed)
    optimizer = sgd(model, opts)
    schedule = scheduler(optimizer, opts)
    for epoch in range(opts.epochs):
        lr = optimizer.param_groups[0]["lr"]
        stats = train_epoch(model, x, y, optimizer, rt, opts, gen, loss_fn, weight, batch_transform,
                            extra_optimizers, desc=f"{desc} {epoch + 1}/{opts.epochs}")
        schedule.step()
        if on_epoch and on_epoch(epoch, {"lr": lr, "train_loss": stats["loss"], "train_acc": stats["acc"]}):
            break
    return optimizer


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, rt: Runtime) -> torch.Tensor:
    """Logits (float32) for uint8 images, in eval mode, without augmentation."""
    was_training = model.training
    model.eval()
    out = []
    for idx in batches(len(x), EVAL_BATCH, None, rt.device):
        with rt.amp():
            out.append(model(rt.model_input(x[idx])).float())
    model.train(was_training)
    if not out:
        return torch.zeros(0, getattr(model, "num_classes", 1), device=rt.device)
    return torch.cat(out)


def per_example_losses(model: nn.Module, x: torch.Tensor, y: torch.Tensor, rt: Runtime) -> torch.Tensor:
    return F.cross_entropy(predict(model, x, rt), y, reduction="none")


def accuracy_and_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, rt: Runtime) -> dict[str, float]:
    if len(y) == 0:
        return {"acc": math.nan, "loss": math.nan}
    logits = predict(model, x, rt)
    return {"acc": (logits.argmax(1) == y).float().mean().item(), "loss": F.cross_entropy(logits, y).item()}


def subset(x: torch.Tensor, y: torch.Tensor, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    chosen = torch.from_numpy(np.asarray(indices, dtype=np.int64)).to(x.device)
    return x[chosen], y[chosen]
