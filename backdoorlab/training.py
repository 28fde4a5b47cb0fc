"""The one training loop, shared by every stage and defense.

Data stays on the device as uint8 (N, H, W, C) tensors; each batch is cropped and
flipped there, converted to [0, 1] floats and fed to the model. What differs between
plain training, ABL's isolation (LGA) and unlearning (gradient ascent) is only the
loss function and the data passed in.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

# (logits, labels, per-example weights) -> scalar; a weight of -1 turns descent into ascent
LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
# (model input in [0, 1], labels) -> (new input, new labels, extra loss or None), applied to each batch after
# augmentation: adversarial training perturbs the input, the input-aware attack stamps generated triggers
BatchTransform = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]
EVAL_BATCH = 1024


@dataclass(frozen=True)
class Runtime:
    """Where and how tensors are computed: CUDA with bf16 autocast when present, else the CPU."""

    device: torch.device
    autocast: torch.dtype | None = None
    channels_last: bool = True

    @classmethod
    def pick(cls, precision: str = "auto") -> "Runtime":
        cuda = torch.cuda.is_available()
        device = torch.device("cuda" if cuda else "cpu")
        bf16 = precision == "bf16" or (precision == "auto" and cuda)
        if cuda:
            torch.backends.cudnn.benchmark = True
        return cls(device, torch.bfloat16 if bf16 else None)

    def amp(self):
        if self.autocast is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.autocast)

    def prepare(self, model: nn.Module) -> nn.Module:
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def tensors(self, x: np.ndarray, y: np.ndarray | None = None):
        """uint8 images and int64 labels onto the device, once."""
        xt = torch.from_numpy(np.ascontiguousarray(x)).to(self.device)
        return xt if y is None else (xt, torch.from_numpy(np.asarray(y, dtype=np.int64)).to(self.device))

    def model_input(self, xb: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, C) -> float (B, C, H, W) in [0, 1]."""
        out = xb.permute(0, 3, 1, 2).float().div_(255.0)
        return out.contiguous(memory_format=torch.channels_last) if self.channels_last else out.contiguous()


@dataclass(frozen=True)
class TrainingConfig:
    """The knobs every training stage shares (params group `train`)."""

    arch: str
    batch_size: int
    momentum: float
    weight_decay: float
    augment: str  # crop_flip | crop | none
    precision: str
    seed: int

    @classmethod
    def from_params(cls, p: dict) -> "TrainingConfig":
        return cls(**{key.split(".", 1)[1]: p[key] for key in p if key.startswith("train.")
                      and key.split(".", 1)[1] in cls.__dataclass_fields__})


def augment(xb: torch.Tensor, mode: str, gen: torch.Generator, pad: int | None = None) -> torch.Tensor:
    """Random crop with reflect-free zero padding, and (crop_flip) horizontal flip, for a whole batch."""
    if mode == "none":
        return xb
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


def train_epoch(model: nn.Module, x: torch.Tensor, y: torch.Tensor, optimizer: torch.optim.Optimizer,
                rt: Runtime, cfg: TrainingConfig, gen: torch.Generator, loss_fn: LossFn = cross_entropy,
                desc: str = "train", batch_size: int | None = None, weight: torch.Tensor | None = None,
                batch_transform: BatchTransform | None = None) -> dict[str, float]:
    """One pass over (x, y) in random order; returns the mean loss and accuracy seen while training."""
    model.train()
    weight = torch.ones(len(y), device=rt.device) if weight is None else weight
    total_loss, correct, seen = 0.0, 0, 0
    bar = tqdm(total=len(y), desc=desc, unit="img", leave=False, mininterval=1.0)
    for idx in batches(len(y), batch_size or cfg.batch_size, gen, rt.device):
        xb = rt.model_input(augment(x[idx], cfg.augment, gen))
        yb, extra = y[idx], None
        if batch_transform is not None:
            xb, yb, extra = batch_transform(xb, yb)
        with rt.amp():
            logits = model(xb)
        loss = loss_fn(logits.float(), yb, weight[idx])
        if extra is not None:
            loss = loss + extra
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{desc}: the loss became {loss.item()}; lower the learning rate")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total_loss += loss.item() * len(idx)
        correct += (logits.argmax(1) == yb).sum().item()
        seen += len(idx)
        bar.update(len(idx))
        bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{correct / seen:.3f}", refresh=False)
    bar.close()
    return {"loss": total_loss / max(seen, 1), "acc": correct / max(seen, 1)}


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, rt: Runtime) -> torch.Tensor:
    """Logits (float32) for uint8 images, in eval mode, without augmentation."""
    model.eval()
    out = []
    for idx in batches(len(x), EVAL_BATCH, None, rt.device):
        with rt.amp():
            out.append(model(rt.model_input(x[idx])).float())
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


def sgd(model: nn.Module, lr: float, cfg: TrainingConfig) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def lr_at(epoch: int, epochs: int, base_lr: float, schedule: str, milestones: list[int]) -> float:
    """The learning rate for an epoch: cosine to zero, x0.1 at each milestone, or constant."""
    if schedule == "cosine":
        return base_lr * 0.5 * (1 + math.cos(math.pi * epoch / epochs))
    if schedule == "step":
        return base_lr * 0.1 ** sum(epoch >= m for m in milestones)
    return base_lr


def fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, rt: Runtime, cfg: TrainingConfig, *,
        epochs: int, lr: float, schedule: str = "constant", milestones: list[int] = (),
        loss_fn: LossFn = cross_entropy, optimizer: torch.optim.Optimizer | None = None,
        on_epoch: Callable[[int, dict], None] | None = None, desc: str = "train",
        batch_size: int | None = None, weight: torch.Tensor | None = None,
        batch_transform: BatchTransform | None = None) -> torch.optim.Optimizer:
    """Train for `epochs` passes; `on_epoch(epoch, stats)` sees each epoch's lr, loss and accuracy."""
    gen = torch.Generator(device=rt.device)
    gen.manual_seed(cfg.seed)
    optimizer = optimizer or sgd(model, lr, cfg)
    for epoch in range(epochs):
        epoch_lr = lr_at(epoch, epochs, lr, schedule, list(milestones))
        for group in optimizer.param_groups:
            group["lr"] = epoch_lr
        stats = train_epoch(model, x, y, optimizer, rt, cfg, gen, loss_fn, desc=f"{desc} {epoch + 1}/{epochs}",
                            batch_size=batch_size, weight=weight, batch_transform=batch_transform)
        if on_epoch:
            on_epoch(epoch, {"lr": epoch_lr, "train_loss": stats["loss"], "train_acc": stats["acc"]})
    return optimizer
