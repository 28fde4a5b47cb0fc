"""Does a superimposition test tell the isolation's false alarms from its true finds?

    cd demo && python -m benchmarks.isolation_confirm badnets --seeds 0 1 2 --output confirm.jsonl

A research probe, not part of the pipeline. It reruns an attack's isolation exactly as
the isolate stage does (same model, seed, params), but never stops: after every epoch it
records the adaptive rule's decision (backdoorlab/defenses/isolation.py, `decide`) and,
where the rule names a label, how persistent that label is on the examples it would
isolate when each is superimposed on images of other labels (STRIP, Gao et al., ACSAC
2019): a trigger keeps its label under blending, a clean image shares the vote with
what it was blended with. The same is measured on two references from the training set:
the rest of the named label, and examples of the other labels (their own label's
persistence). Poison indices score each decision (precision); the probe itself reads
training data only. One JSON line per epoch.

    python -m benchmarks.isolation_confirm badnets --finetuned --seeds 0 1 2 --alphas 0 0.5 --output ft.jsonl

With `--finetuned` it reads the isolate stage's outputs instead of training: the model
fine-tuned on everything not isolated (which never saw the isolated examples) and the
isolated indices, one JSON line per seed. What it found (it does not separate false
alarms from true finds across the demo and CIFAR-10):
benchmarks/results/isolation-confirm-strip-amd-epyc-f25m17.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import torch

from backdoorlab import params
from backdoorlab.artifacts import check_model_name, training_set
from backdoorlab.defenses.isolation import FINETUNED, IsolationConfig, decide, lga_loss
from backdoorlab.layout import isolated_file, model_file
from backdoorlab.models import load_model, new_model
from backdoorlab.params import ParamError
from backdoorlab.runtime import Runtime
from backdoorlab.storage import load_arrays
from backdoorlab.training import TrainOptions, predict, sgd, train_epoch

PARAMS = params.MODEL_KEYS + ["isolate.max_epochs", "isolate.lr", "isolate.gamma", "isolate.lga",
                              "isolate.augment", "isolate.selection", "isolate.ratio", "isolate.min_concentration",
                              "isolate.window", "isolate.drop", "isolate.min_gap"]


def persistence(model, x: torch.Tensor, y: np.ndarray, who: np.ndarray, label: int | np.ndarray, rt: Runtime,
                partners: int, alpha: float, rng: np.random.Generator) -> float:
    """Share of blends (1 - alpha) * x_i + alpha * x_j (alpha 0: x_i + x_j, clipped), `partners` per example i
    of `who`, each j drawn from the examples whose label is not i's `label`, that the model still assigns to
    that label."""
    if len(who) == 0:
        return float("nan")
    labels = np.broadcast_to(np.asarray(label), who.shape)
    firsts, seconds = [], []
    for i, lab in zip(who, labels):
        pool = np.flatnonzero(y != lab)
        firsts.append(np.full(partners, i))
        seconds.append(rng.choice(pool, size=partners, replace=False))
    a = torch.from_numpy(np.concatenate(firsts)).to(x.device)
    b = torch.from_numpy(np.concatenate(seconds)).to(x.device)
    if alpha > 0:  # a weighted mean: the partner's weight is alpha
        blend = ((1 - alpha) * x[a].float() + alpha * x[b].float()).round().clamp(0, 255).to(torch.uint8)
    else:  # alpha 0: the sum, clipped (STRIP's superimposition): both images at full strength
        blend = (x[a].float() + x[b].float()).clamp(0, 255).to(torch.uint8)
    votes = predict(model, blend, rt).argmax(1).cpu().numpy()
    return float((votes == np.repeat(labels, partners)).mean())


def transfer(model, x: torch.Tensor, labels: np.ndarray, group: np.ndarray, base: np.ndarray, label: int,
             rt: Runtime, rng: np.random.Generator, count: int = 500) -> float:
    """Share of examples of other labels than `label` that the model assigns to it once the mean image of `group`
    minus the mean image of `base` is added to them. A pattern the group shares and the base lacks (a trigger)
    carries the label over."""
    pattern = x[torch.from_numpy(group)].float().mean(0) - x[torch.from_numpy(base)].float().mean(0)
    pool = np.setdiff1d(np.flatnonzero(labels != label), group)
    others = torch.from_numpy(rng.choice(pool, size=min(count, len(pool)), replace=False))
    moved = (x[others].float() + pattern).round().clamp(0, 255).to(torch.uint8)
    return float((predict(model, moved, rt).argmax(1).cpu().numpy() == label).mean())


def probe(attack: str, seed: int, max_epochs: int | None, partners: int, alphas: list[float], out) -> None:
    p = params.load(PARAMS)
    cfg = IsolationConfig.from_params(p)
    if max_epochs:
        cfg = dataclasses.replace(cfg, max_epochs=max_epochs)
    opts = TrainOptions.from_params(p, seed=seed)
    data = training_set(check_model_name(attack))
    rt = Runtime.pick(p["train.precision"], p["train.arch"], opts.batch_size)
    x, y = rt.tensors(data.x, data.y)
    labels = y.cpu().numpy()
    poisoned = np.zeros(len(labels), dtype=bool)
    poisoned[data.poison_indices] = True
    model = rt.prepare(new_model(p["train.arch"], data.x, len(data.classes), seed))
    opts = opts.replace(epochs=cfg.max_epochs, lr=cfg.lr, schedule="constant", augment=cfg.augment)
    gen = torch.Generator(device=rt.device).manual_seed(opts.seed)
    optimizer = sgd(model, opts)
    seen = torch.zeros(len(y), device=rt.device)
    history: list[np.ndarray] = []
    for epoch in range(cfg.max_epochs):
        train_epoch(model, x, y, optimizer, rt, opts, gen, lga_loss(cfg.gamma, cfg.per_example),
                    desc=f"isolate {epoch + 1}/{cfg.max_epochs}", example_losses=seen)
        history.append(seen.cpu().numpy().copy())
        decision = decide(history, labels, cfg)
        cand = decision.candidates
        row = {"attack": attack, "target": data.target if data.poison_indices.size else None,
               "rate": len(data.poison_indices) / len(labels), "seed": seed, "epoch": epoch + 1,
               "found": decision.found, "label": cand.label, "signal": cand.signal,
               "concentration": round(cand.concentration, 3), "gap": round(cand.gap, 3)}
        if decision.found:
            chosen = cand.indices[labels[cand.indices] == cand.label]
            rng = np.random.default_rng([seed, epoch])
            rest = np.setdiff1d(np.flatnonzero(labels == cand.label), chosen)
            others = np.flatnonzero(labels != cand.label)
            ref_label = rng.choice(rest, size=min(200, len(rest)), replace=False)
            ref_other = rng.choice(others, size=200, replace=False)
            row.update(isolated=int(len(chosen)), precision=round(float(poisoned[chosen].mean()), 3),
                       ref_label_poisoned=round(float(poisoned[ref_label].mean()), 3))
            for alpha in alphas:
                row[f"chosen@{alpha}"] = round(persistence(model, x, labels, chosen, cand.label, rt, partners,
                                                           alpha, rng), 3)
                row[f"label@{alpha}"] = round(persistence(model, x, labels, ref_label, cand.label, rt, partners,
                                                          alpha, rng), 3)
                row[f"other@{alpha}"] = round(persistence(model, x, labels, ref_other, labels[ref_other], rt,
                                                          partners, alpha, rng), 3)
        out.write(json.dumps(row) + "\n")
        out.flush()


def probe_finetuned(attack: str, seed: int, partners: int, alphas: list[float], out) -> None:
    """The isolate stage's own outputs: the fine-tuned model (never trained on the isolated examples) and the
    isolated indices."""
    p = params.load(PARAMS)
    data = training_set(check_model_name(attack))
    rt = Runtime.pick(p["train.precision"], p["train.arch"], p["train.batch_size"])
    x, _ = rt.tensors(data.x, data.y)
    labels = data.y
    poisoned = np.zeros(len(labels), dtype=bool)
    poisoned[data.poison_indices] = True
    model = rt.prepare(load_model(model_file(attack, seed, FINETUNED)))
    chosen = load_arrays(isolated_file(attack, seed))["indices"]
    row = {"attack": attack, "target": data.target if data.poison_indices.size else None,
           "rate": len(data.poison_indices) / len(labels), "seed": seed, "model": "finetuned",
           "isolated": int(len(chosen))}
    if len(chosen):
        label = int(np.bincount(labels[chosen]).argmax())
        rng = np.random.default_rng([seed, 7])
        rest = np.setdiff1d(np.flatnonzero(labels == label), chosen)
        others = np.flatnonzero(labels != label)
        ref_label = rng.choice(rest, size=min(200, len(rest)), replace=False)
        ref_other = rng.choice(others, size=200, replace=False)
        votes = predict(model, x[torch.from_numpy(chosen)], rt).argmax(1).cpu().numpy()
        row.update(label=label, precision=round(float(poisoned[chosen].mean()), 3),
                   chosen_acc=round(float((votes == label).mean()), 3),
                   ref_label_poisoned=round(float(poisoned[ref_label].mean()), 3))
        for alpha in alphas:
            row[f"chosen@{alpha}"] = round(persistence(model, x, labels, chosen, label, rt, partners, alpha, rng), 3)
            row[f"label@{alpha}"] = round(persistence(model, x, labels, ref_label, label, rt, partners, alpha, rng), 3)
            row[f"other@{alpha}"] = round(persistence(model, x, labels, ref_other, labels[ref_other], rt, partners,
                                                      alpha, rng), 3)
        # the isolated group's mean image minus the rest of its label's, added to images of other labels; a
        # decoy (a random group of that rest, as large) is the control
        rng = np.random.default_rng([seed, 8])
        decoy = rng.choice(rest, size=min(len(chosen), len(rest)), replace=False)
        for name, group in (("chosen", chosen), ("decoy", decoy)):
            row[f"transfer_{name}"] = round(transfer(model, x, labels, group, np.setdiff1d(rest, group), label,
                                                     rt, rng), 3)
    out.write(json.dumps(row) + "\n")
    out.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.isolation_confirm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("attack", help="an attack whose poison stage has run in this folder, or 'clean'")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--max-epochs", type=int, help="isolation epochs to record (default: isolate.max_epochs)")
    parser.add_argument("--partners", type=int, default=20, help="blends per example")
    parser.add_argument("--alphas", nargs="+", type=float, default=[0.5],
                        help="the partner's weight in a blend; 0: the clipped sum")
    parser.add_argument("--finetuned", action="store_true",
                        help="probe the isolate stage's outputs (fine-tuned model, isolated indices) instead")
    parser.add_argument("--output", type=Path, required=True, help="JSON lines, appended")
    args = parser.parse_args(argv)
    if args.partners < 1 or any(not 0 <= a < 1 for a in args.alphas):
        parser.exit(2, "--partners: an integer >= 1; --alphas: numbers in [0, 1)\n")
    try:
        check_model_name(args.attack)
        with args.output.open("a") as out:
            for seed in args.seeds:
                if args.finetuned:
                    probe_finetuned(args.attack, seed, args.partners, args.alphas, out)
                else:
                    probe(args.attack, seed, args.max_epochs, args.partners, args.alphas, out)
    except ParamError as exc:
        parser.exit(2, f"{exc}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
