"""Anti-Backdoor Learning (Li et al., NeurIPS 2021): the paper's method and this project's default.

ABL rests on two observations: a model learns poisoned examples much faster than clean
ones, and a backdoor ties them to one target class. Phase 1 (the `isolate` stage,
shared by both ABL defenses) trains a model with the LGA loss, isolates the examples
it learned suspiciously fast, and keeps training it on the rest. Phase 2 (each ABL
defense's own stage) unlearns the isolated examples.

The paper (registry entry `abl_paper`, params group `abl_paper`): isolate the lowest
1% of per-example losses after T_te epochs (`isolate.selection: lowest`), then
gradient *ascent* on their cross-entropy, lr 5e-4, a fixed number of epochs.

This project's ABL (entry `abl`, the default), every choice made on training data:

- Isolation trains without augmentation, as the paper does: a shifted or cut corner
  trigger is learned later, and then not at all within a short isolation budget.
- When to stop and what to isolate (`isolate.selection: adaptive`): every example's
  loss is recorded as training sees it, each epoch, at no extra cost; its mean log
  loss over the epochs so far is its learning speed (one epoch alone is noise: the
  LGA loss makes the model swing, and a whole easy class can dip for an epoch). A
  backdoor is learned by one label, so among the fastest `isolate.ratio` of the data
  one label comes to dominate; on clean data the fastest are spread over the easy
  classes. Isolation stops at the first epoch (from the second on) where one label
  holds `isolate.min_concentration` of the fastest, and isolates those of that label.
  If no epoch does, it isolates nothing and says so in its metrics, rather than
  unlearning arbitrary clean images. Neither the rate nor the target class enters.
- What to unlearn (`abl.expand: features`): the isolated 1% is only a sample of the
  poison, and the rest of it, left in the training that follows, keeps teaching the
  backdoor. In the fine-tuned model, which has learned the backdoor, poisoned inputs
  share a representation (Chen et al. 2018, activation clustering): every example of
  the isolated label is projected on the direction from the rest of that label to the
  isolated examples, Otsu's threshold splits the projections, and the high side,
  with the examples of that label that isolation found as fast to learn as the
  isolated group, is unlearned. The lower half of the rest serves as clean examples
  of the label (the poison the split misses lies just below it).
- Unlearning descends on -log(1 - p(label)) for those examples instead of ascending
  on their cross-entropy: its gradient does not vanish where p(label) ~ 1 (ascent's
  does, so whether it takes off is luck) and it vanishes by itself once an example is
  forgotten. Clean examples are learned at the same time (`same_label_ratio` of the
  label's clean examples and `clean_ratio` of the other labels' per unlearned one),
  so the model unlearns the trigger and not the class. It stops once the unlearned
  examples' accuracy has fallen to `stop_isolated_acc`: a rule on training data only.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..layout import isolated_file, model_file
from ..models import load_model
from ..params import choice, integer, number, rate
from ..runtime import Runtime
from ..storage import load_arrays
from ..training import LossFn, TrainOptions, accuracy_and_loss, per_example_losses, sgd, subset, train_epoch
from .base import Defense, DefenseJob

FINETUNED = "finetuned"  # the phase-1 model both ABL defenses start from: models/<attack>/seed<k>/finetuned.pt
Log = Callable[[nn.Module, dict], None]


# ----------------------------------------------------------------------------- phase 1: isolation

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


def learning_speed(history: list[np.ndarray]) -> np.ndarray:
    """Each example's mean log10 loss over the isolation epochs as training saw it, the first epoch left out
    once there are others (it starts from a random model). Low: learned fast and kept learned."""
    logs = np.log10(np.stack(history[1:] if len(history) > 1 else history) + 1e-8)
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


@dataclass
class Isolation:
    indices: np.ndarray  # isolated examples, sorted
    losses: np.ndarray  # every example's loss (eval mode) when isolation stopped
    speed: np.ndarray  # every example's learning speed (see learning_speed) when isolation stopped
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

    @classmethod
    def from_params(cls, p: dict) -> "IsolationConfig":
        return cls(p["isolate.max_epochs"], p["isolate.lr"], p["isolate.gamma"], p["isolate.lga"] == "per_example",
                   p["isolate.augment"], p["isolate.selection"], p["isolate.ratio"], p["isolate.min_concentration"])


def isolate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, rt: Runtime, opts: TrainOptions,
            cfg: IsolationConfig, log: Log) -> Isolation:
    """Train `model` with LGA at a constant lr (the paper's), and isolate (see the module's notes)."""
    opts = opts.replace(epochs=cfg.max_epochs, lr=cfg.lr, schedule="constant", augment=cfg.augment)
    gen = torch.Generator(device=rt.device).manual_seed(opts.seed)
    optimizer = sgd(model, opts)
    labels = y.cpu().numpy()
    seen = torch.zeros(len(y), device=rt.device)
    history: list[np.ndarray] = []
    found = False
    for epoch in range(cfg.max_epochs):
        stats = train_epoch(model, x, y, optimizer, rt, opts, gen, lga_loss(cfg.gamma, cfg.per_example),
                            desc=f"isolate {epoch + 1}/{cfg.max_epochs}", example_losses=seen)
        history.append(seen.cpu().numpy().copy())
        cand = candidates(learning_speed(history), labels, cfg.ratio)
        log(model, {"lr": cfg.lr, "train_loss": stats["loss"], "train_acc": stats["acc"],
                    "concentration": cand.concentration, "label": cand.label, "gap": cand.gap})
        if cfg.selection == "adaptive" and epoch >= 1 and cand.concentration >= cfg.min_concentration:
            found = True
            break
    losses = per_example_losses(model, x, y, rt).cpu().numpy()
    speed = learning_speed(history)
    if cfg.selection == "lowest":
        return Isolation(isolate_lowest(losses, cfg.ratio), losses, speed, len(history), True, cand)
    chosen = cand.indices[labels[cand.indices] == cand.label] if found else np.zeros(0, dtype=np.int64)
    return Isolation(np.sort(chosen), losses, speed, len(history), found, cand)


def dominated_prefix(speed: np.ndarray, y: np.ndarray, label: int, concentration: float) -> np.ndarray:
    """The examples of `label` among the longest fastest-first prefix in which `label` keeps `concentration`."""
    order = np.argsort(speed, kind="stable")
    share = np.cumsum(y[order] == label) / np.arange(1, len(order) + 1)
    kept = np.flatnonzero(share >= concentration)
    prefix = order[:kept.max() + 1] if len(kept) else order[:0]
    return np.sort(prefix[y[prefix] == label])


# ----------------------------------------------------------------------------- phase 2: unlearning

def forget_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """-log(1 - p(y)) per example, computed stably: log(1 - p_y) = logsumexp(z without y) - logsumexp(z)."""
    others = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf"))
    return torch.logsumexp(logits, 1) - torch.logsumexp(others, 1)


def unlearning_loss(objective: str, cap: float = 0.0) -> LossFn:
    """Examples with a negative weight are unlearned, the others learned (cross-entropy).

    objective "ascent": the paper's gradient ascent on the cross-entropy, optionally capped at `cap`
    (0: no cap); "forget": descent on -log(1 - p(label)).
    """

    def loss(logits: torch.Tensor, y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(logits, y, reduction="none")
        if objective == "forget":
            unlearned = forget_loss(logits, y)
        else:
            unlearned = -(torch.clamp(ce, max=cap) if cap > 0 else ce)
        return torch.where(weight < 0, -weight * unlearned, weight * ce).mean()

    return loss


def otsu_split(values: np.ndarray) -> tuple[float, float]:
    """Otsu's two-group split of 1-D values: (effectiveness in [0, 1], threshold: the high group is > it).

    Effectiveness is the between-group variance of the best split over the total variance: about
    0.64 for one normal mode, near 1 for two far-apart groups.
    """
    v = np.sort(np.asarray(values, dtype=np.float64))
    n = len(v)
    if n < 2 or v[-1] - v[0] < 1e-12:
        return 0.0, float(v[-1]) if n else 0.0
    below = np.arange(1, n)
    low_sum = np.cumsum(v)[:-1]
    between = (below / n) * (1 - below / n) * (low_sum / below - (v.sum() - low_sum) / (n - below)) ** 2
    best = int(np.argmax(between))
    return float(between[best] / v.var()), float(v[best])


@torch.no_grad()
def features(model: nn.Module, x: torch.Tensor, rt: Runtime, batch: int = 512) -> np.ndarray:
    """Penultimate features in eval mode, each scaled to unit length."""
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(x), batch):
        with rt.amp():
            out.append(model.features(rt.model_input(x[start:start + batch])).float())
    model.train(was_training)
    f = torch.cat(out).cpu().numpy()
    return f / (np.linalg.norm(f, axis=1, keepdims=True) + 1e-12)


@dataclass
class Expansion:
    """The isolated examples' label split in two by how much each example looks like them to the model."""

    forget: np.ndarray  # the isolated examples and those of their label on their side of the split
    anchors: np.ndarray  # the half of the rest of their label least like them: clean examples of the class itself
    separation: float  # Otsu effectiveness of the split


def expand_in_features(model: nn.Module, x: torch.Tensor, y: np.ndarray, isolated: np.ndarray,
                       rt: Runtime, fast: np.ndarray | None = None) -> Expansion:
    """Find the rest of the poison: in a model that learned the backdoor, poisoned inputs share a
    representation (Chen et al. 2018, activation clustering). Seeded by the isolated examples, every
    example of their label is projected on the direction from the rest of that label to the isolated
    ones, and the projections are split in two by Otsu's threshold. The poison the split misses lies
    just below it, so only the lower half of the rest serves as clean examples of the label."""
    label = int(np.bincount(y[isolated]).argmax())
    members = np.flatnonzero(y == label)
    f = features(model, x[torch.from_numpy(members).to(x.device)], rt)
    seed = np.isin(members, isolated)
    projection = f @ (f[seed].mean(0) - f[~seed].mean(0))
    separation, threshold = otsu_split(projection)
    high = projection > threshold
    if fast is not None:  # as fast to learn as the isolated group: poison too, by the other signal
        high |= np.isin(members, fast)
    forget = np.union1d(isolated, members[high])
    rest = ~high & ~seed
    anchors = members[rest & (projection <= np.median(projection[rest]))] if rest.any() else members[:0]
    return Expansion(forget, anchors, separation)


@dataclass(frozen=True)
class UnlearningConfig:
    expand: str  # features | none: unlearn only the isolated examples
    objective: str  # forget | ascent
    loss_cap: float  # ascent only
    lr: float
    batch_size: int
    max_epochs: int
    clean_ratio: float  # clean examples drawn at random per isolated example
    same_label_ratio: float  # clean examples with the isolated example's label, per isolated example
    stop: str  # isolated_acc | none
    stop_isolated_acc: float


def unlearn(model: nn.Module, x: torch.Tensor, y: torch.Tensor, isolated: np.ndarray, rt: Runtime,
            opts: TrainOptions, cfg: UnlearningConfig, log: Log, fast: np.ndarray | None = None) -> dict:
    """Unlearn the `isolated` examples (with cfg.expand, and those sharing their representation), learning
    clean examples alongside: `same_label_ratio` per unlearned example from the rest of their label and
    `clean_ratio` from the other labels. Returns a summary.

    Epoch 0 of the log is the model before unlearning. Stops after cfg.max_epochs, or (stop: isolated_acc)
    at the first epoch whose unlearned examples' accuracy is at most cfg.stop_isolated_acc.
    """
    opts = opts.replace(lr=cfg.lr, batch_size=cfg.batch_size, augment="none", epochs=cfg.max_epochs)
    rng = np.random.default_rng(opts.seed)
    gen = torch.Generator(device=rt.device).manual_seed(opts.seed)
    optimizer = sgd(model, opts)
    labels = y.cpu().numpy()
    suspect = np.isin(labels, labels[isolated]) if len(isolated) else np.zeros(len(labels), dtype=bool)
    others = np.flatnonzero(~suspect)
    loss_fn = unlearning_loss(cfg.objective, cfg.loss_cap)
    summary = {"isolated": int(len(isolated)), "epochs": 0, "stopped_by": "max_epochs"}
    if len(isolated) and cfg.expand == "features":
        split = expand_in_features(model, x, labels, isolated, rt, fast)
        forget, anchors = split.forget, split.anchors
        summary.update(unlearned=int(len(forget)), feature_separation=split.separation)
    else:
        forget, anchors = isolated, np.setdiff1d(np.flatnonzero(suspect), isolated)
        summary["unlearned"] = int(len(forget))
    for epoch in range(cfg.max_epochs + 1):
        fit_now = accuracy_and_loss(model, *subset(x, y, forget), rt) if len(forget) else {"acc": 0.0, "loss": 0.0}
        log(model, {"lr": cfg.lr if epoch else 0.0, "unlearned": len(forget), "unlearned_acc": fit_now["acc"],
                    "unlearned_loss": fit_now["loss"]})
        summary.update(epochs=epoch, final_unlearned_acc=fit_now["acc"])
        if not len(isolated):
            summary["stopped_by"] = "nothing isolated"
            break
        if cfg.stop == "isolated_acc" and fit_now["acc"] <= cfg.stop_isolated_acc:
            summary["stopped_by"] = "isolated_acc"
            break
        if epoch == cfg.max_epochs:
            break
        same = rng.choice(anchors, size=round(cfg.same_label_ratio * len(forget))) if len(anchors) else anchors
        pool = others if len(others) else np.setdiff1d(np.arange(len(labels)), forget)
        random = rng.choice(pool, size=min(len(pool), round(cfg.clean_ratio * len(forget))), replace=False)
        clean = np.concatenate([same, random]).astype(np.int64)
        chosen = np.concatenate([forget, clean]).astype(np.int64)
        weight = torch.cat([-torch.ones(len(forget)), torch.ones(len(clean))]).to(rt.device)
        xs, ys = subset(x, y, chosen)
        train_epoch(model, xs, ys, optimizer, rt, opts, gen, loss_fn, weight,
                    desc=f"unlearn {epoch + 1}/{cfg.max_epochs}")
    return summary


class ABL(Defense):
    """Unlearning on top of the isolate stage's outputs; `abl` and `abl_paper` differ only in their knobs."""

    knobs = {"expand": choice("features", "none"), "objective": choice("forget", "ascent"),
             "loss_cap": number(0.0), "lr": number(0.0, lo_open=True), "batch_size": integer(1),
             "max_epochs": integer(0), "clean_ratio": number(0.0), "same_label_ratio": number(0.0),
             "stop": choice("isolated_acc", "none"), "stop_isolated_acc": rate()}

    def inputs(self, attack: str, seed: int) -> list[Path]:
        return [model_file(attack, seed, FINETUNED), isolated_file(attack, seed)]

    def defend(self, job: DefenseJob) -> tuple[nn.Module, dict]:
        model = job.rt.prepare(load_model(model_file(job.attack, job.seed, FINETUNED)))
        isolation = load_arrays(isolated_file(job.attack, job.seed))
        labels = job.y.cpu().numpy()
        isolated = isolation["indices"]
        fast = dominated_prefix(isolation["speed"], labels, int(np.bincount(labels[isolated]).argmax()),
                                0.9) if len(isolated) else None
        return model, unlearn(model, job.x, job.y, isolated, job.rt, job.train, UnlearningConfig(**self.knobs),
                              job.log, fast)
