"""Where do the examples the unlearning takes away from the label go? A diagnostic for false alarms.

    cd demo && python -m benchmarks.unlearned_destinations badnets input_aware --seeds 0 1 2

A research probe, not part of the pipeline, and not a defense: it counts the true poison among
what it reports (data/poisoned/<attack>/train.npz), which the defense never sees. For each seed
whose isolation found something, it compares the isolate stage's fine-tuned model with the
defend_abl stage's model on the isolated label's training examples (the isolated ones left
out): those the first predicted as the label and the second does not have been taken away from
it. The question is whether where they go tells poison from a false alarm without the trigger.
Label-flipping poison (BadNets, Blend, input-aware) is other classes' images, so it goes back to
many classes; a false alarm unlearns clean images of the label, which go to the one or two
classes that look most like it. So does clean-label poison (SIG, clean-label), which is the
label's own images.

Columns: the label; the examples taken away (poisoned among them) out of the label's examples;
the largest share any one class received and the entropy of the destinations over log 9 (1 =
spread evenly over the other nine classes); the same for the isolate stage's held-out slice of
the label (the examples the fine-tuning never saw); and how well the fine-tuned model's
log p(label) and its strongest other class's logit rank the label's poison above its clean
examples (AUC; 0.5 = no better than chance).
"""
from __future__ import annotations

import sys

import numpy as np
import torch

from backdoorlab.artifacts import check_model_name, training_set
from backdoorlab.defenses.abl import average_ranks
from backdoorlab.defenses.isolation import FINETUNED
from backdoorlab.layout import isolated_file, model_file
from backdoorlab.models import load_model
from backdoorlab.runner import require
from backdoorlab.runtime import Runtime
from backdoorlab.storage import load_arrays
from backdoorlab.training import predict
from benchmarks.probe_table import table_probe_main
from benchmarks.unlearn_oracle import abl_config

HEADER = ["| run | label | taken away: all (poisoned) / label's examples | largest share to one class | "
          "entropy / log 9 | held-out slice: taken away (poisoned) / size, largest share | "
          "AUC log p(label) | AUC strongest other logit |",
          "|---|---:|---|---:|---:|---|---:|---:|"]


def destinations(before: np.ndarray, after: np.ndarray, label: int, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Which examples were taken away from `label` (predicted as it before, not after), and how many went to
    each class."""
    taken = (before == label) & (after != label)
    return taken, np.bincount(after[taken], minlength=classes)


def spread(counts: np.ndarray) -> tuple[float, float]:
    """(largest share of one class, entropy over log(classes that could receive them))."""
    total = counts.sum()
    if not total:
        return float("nan"), float("nan")
    share = counts / total
    nonzero = share[share > 0]
    return float(share.max()), float(-(nonzero * np.log(nonzero)).sum() / np.log(len(counts) - 1))


def auc(score: np.ndarray, positive: np.ndarray) -> float:
    """Probability that a positive example scores above a negative one (ties count half)."""
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:
        return float("nan")
    ranks = average_ranks(score)  # 0-based
    return float((ranks[positive].sum() - n_pos * (n_pos - 1) / 2) / (n_pos * n_neg))


def probe(attack: str, seed: int) -> list[str]:
    p, _ = abl_config()
    data = training_set(check_model_name(attack))
    require(model_file(attack, seed, FINETUNED), model_file(attack, seed, "abl"), isolated_file(attack, seed))
    isolation = load_arrays(isolated_file(attack, seed))
    if not len(isolation["indices"]):
        return [f"| {attack} seed {seed} | nothing isolated | | | | | | |"]
    rt = Runtime.pick(p["train.precision"], p["train.arch"], p["train.batch_size"], p["train.threads"])
    x, _ = rt.tensors(data.x, data.y)
    label = int(np.bincount(data.y[isolation["indices"]]).argmax())  # as the defense: strays of other labels aside
    members = np.setdiff1d(np.flatnonzero(data.y == label), isolation["indices"])
    inputs = x[torch.as_tensor(members, device=x.device)]
    logits = predict(rt.prepare(load_model(model_file(attack, seed, FINETUNED))), inputs, rt).float()
    after = predict(rt.prepare(load_model(model_file(attack, seed, "abl"))), inputs, rt).float().argmax(1).cpu().numpy()
    before = logits.argmax(1).cpu().numpy()
    classes = logits.shape[1]
    poisoned = np.isin(members, data.poison_indices)
    taken, counts = destinations(before, after, label, classes)
    top, entropy = spread(counts)
    held = np.isin(members, isolation["holdout"])
    held_taken, held_counts = destinations(before[held], after[held], label, classes)
    held_top, _ = spread(held_counts)
    confidence = torch.log_softmax(logits, 1)[:, label].cpu().numpy()
    others = logits.clone()
    others[:, label] = -torch.inf
    return [f"| {attack} seed {seed} | {label} | {int(taken.sum())} ({int((taken & poisoned).sum())}) / "
            f"{len(members)} | {top:.2f} | {entropy:.2f} | {int(held_taken.sum())} "
            f"({int((held_taken & poisoned[held]).sum())}) / {int(held.sum())}, {held_top:.2f} | "
            f"{auc(confidence, poisoned):.2f} | {auc(others.max(1).values.cpu().numpy(), poisoned):.2f} |"]


def main(argv: list[str] | None = None) -> int:
    return table_probe_main("python -m benchmarks.unlearned_destinations", __doc__, HEADER, probe, argv)


if __name__ == "__main__":
    sys.exit(main())
