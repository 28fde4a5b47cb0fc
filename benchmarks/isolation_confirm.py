"""Does a superimposition test tell the isolation's false alarms from its true finds?

    cd demo && python -m benchmarks.isolation_confirm badnets --seeds 0 1 2 --output confirm.jsonl

A research probe, not part of the pipeline. It reruns an attack's isolation with the
isolate stage's own code (same model, seed, params), kept from stopping: for every epoch it
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
import copy
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import torch

from backdoorlab import params
from backdoorlab.artifacts import check_model_name, training_set
from backdoorlab.defenses.isolation import FINETUNED, IsolationConfig, decide, isolate
from backdoorlab.layout import isolated_file, model_file
from backdoorlab.models import load_model, new_model
from backdoorlab.params import ParamError
from backdoorlab.runtime import Runtime
from backdoorlab.storage import load_arrays
from backdoorlab.training import TrainOptions, predict

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


def blend_scores(model, x: torch.Tensor, labels: np.ndarray, chosen: np.ndarray, label: int, poisoned: np.ndarray,
                 rt: Runtime, partners: int, alphas: list[float], rng: np.random.Generator) -> dict:
    """Persistence of `label` under each blend on the isolated examples, on 200 of the rest of that label and on
    200 examples of other labels (their own label), and the poison's share of the label's reference."""
    rest = np.setdiff1d(np.flatnonzero(labels == label), chosen)
    ref_label = rng.choice(rest, size=min(200, len(rest)), replace=False)
    ref_other = rng.choice(np.flatnonzero(labels != label), size=200, replace=False)
    scores = {"precision": round(float(poisoned[chosen].mean()), 3),
              "ref_label_poisoned": round(float(poisoned[ref_label].mean()), 3)}
    for alpha in alphas:
        for name, who, own in (("chosen", chosen, label), ("label", ref_label, label),
                               ("other", ref_other, labels[ref_other])):
            scores[f"{name}@{alpha}"] = round(persistence(model, x, labels, who, own, rt, partners, alpha, rng), 3)
    return scores


def describe(attack: str, seed: int, data) -> dict:
    return {"attack": attack, "target": data.target if data.poison_indices.size else None,
            "rate": len(data.poison_indices) / len(data.y), "seed": seed}


def poison_mask(data) -> np.ndarray:
    poisoned = np.zeros(len(data.y), dtype=bool)
    poisoned[data.poison_indices] = True
    return poisoned


def probe(attack: str, seed: int, max_epochs: int | None, partners: int, alphas: list[float], out) -> None:
    """The isolate stage's own training (backdoorlab.defenses.isolation.isolate), kept from stopping by an
    unreachable concentration; the model is kept after every epoch, and the real rule is then replayed on the
    history, epoch by epoch."""
    p = params.load(PARAMS)
    cfg = IsolationConfig.from_params(p)
    if max_epochs:
        cfg = dataclasses.replace(cfg, max_epochs=max_epochs)
    data = training_set(check_model_name(attack))
    rt = Runtime.pick(p["train.precision"], p["train.arch"], p["train.batch_size"], p["train.threads"])
    x, y = rt.tensors(data.x, data.y)
    labels, poisoned = data.y, poison_mask(data)
    model = rt.prepare(new_model(p["train.arch"], data.x, len(data.classes), seed))
    states: list[dict] = []
    never = dataclasses.replace(cfg, min_concentration=1.01)
    trace = isolate(model, x, y, rt, TrainOptions.from_params(p, seed=seed), never,
                    lambda m, stats: states.append(copy.deepcopy(m.state_dict()))).history
    history = list(trace)
    for epoch in range(len(history)):
        decision = decide(history[:epoch + 1], labels, cfg)
        cand = decision.candidates
        row = {**describe(attack, seed, data), "epoch": epoch + 1, "found": decision.found, "label": cand.label,
               "signal": cand.signal, "concentration": round(cand.concentration, 3), "gap": round(cand.gap, 3)}
        if decision.found:
            chosen = cand.indices[labels[cand.indices] == cand.label]
            model.load_state_dict(states[epoch])
            rng = np.random.default_rng([seed, epoch])
            row.update(isolated=int(len(chosen)),
                       **blend_scores(model, x, labels, chosen, cand.label, poisoned, rt, partners, alphas, rng))
        out.write(json.dumps(row) + "\n")
        out.flush()


def probe_finetuned(attack: str, seed: int, partners: int, alphas: list[float], out) -> None:
    """The isolate stage's own outputs: the fine-tuned model (never trained on the isolated examples) and the
    isolated indices."""
    p = params.load(PARAMS)
    data = training_set(check_model_name(attack))
    rt = Runtime.pick(p["train.precision"], p["train.arch"], p["train.batch_size"], p["train.threads"])
    x = rt.tensors(data.x)
    labels, poisoned = data.y, poison_mask(data)
    model = rt.prepare(load_model(model_file(attack, seed, FINETUNED)))
    chosen = load_arrays(isolated_file(attack, seed))["indices"]
    row = {**describe(attack, seed, data), "model": "finetuned", "isolated": int(len(chosen))}
    if len(chosen):
        label = int(np.bincount(labels[chosen]).argmax())
        votes = predict(model, x[torch.from_numpy(chosen)], rt).argmax(1).cpu().numpy()
        row.update(label=label, chosen_acc=round(float((votes == label).mean()), 3))
        row.update(blend_scores(model, x, labels, chosen, label, poisoned, rt, partners, alphas,
                                np.random.default_rng([seed, 7])))
        # the isolated group's mean image minus the rest of its label's, added to images of other labels; a
        # decoy (a random group of that rest, as large) is the control
        rest = np.setdiff1d(np.flatnonzero(labels == label), chosen)
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
