"""Stage `isolate@<attack>-<seed>`: ABL's first phase, shared by the ABL defenses.

Trains a fresh model with the LGA loss (no augmentation, constant lr) and isolates the
examples it learns suspiciously fast, or that fall from hard to fitted together
(`isolate.selection`: adaptive, this project's default, or lowest, the paper's lowest
`isolate.ratio`), then keeps training the same
model on everything not isolated (`isolate.finetune_*`, with the training
augmentation and a cosine schedule) but a random `isolate.holdout` share, which the
unlearning scores to measure its cost on examples the model has not fitted. Both ABL
defenses start from that model.
Precision and recall are computed against the true poison indices for the metrics
only; the isolation itself never sees them.

Reads   data/dataset.npz, data/poisoned/<attack>/ ; params train.{arch,batch_size,momentum,weight_decay,
        augment,precision,threads}, isolate.*
Writes  models/<attack>/seed<k>/finetuned.pt          the model the unlearning starts from
        data/isolated/<attack>/seed<k>.npz           isolated indices, the fine-tuning's held-out indices, every
                                                     example's loss and learning speed, and its loss per
                                                     isolation epoch (history)
        metrics/isolation/<attack>/seed<k>.json      found or not, when it stopped, by which signal, the suspect
                                                     label and its share of the suspects, how many isolated,
                                                     precision, recall
        plots/isolation/<attack>/seed<k>.png          loss histogram, clean vs poisoned, with the cut-off
        logs/isolate/<attack>/seed<k>/, logs/finetune/<attack>/seed<k>/   per-epoch curves
"""
from __future__ import annotations

import numpy as np

from backdoorlab import params
from backdoorlab.artifacts import check_model_name, test_sets, training_set
from backdoorlab.curves import Curves
from backdoorlab.defenses.isolation import FINETUNED, IsolationConfig, finetune_holdout, isolate
from backdoorlab.gallery import loss_histogram
from backdoorlab.layout import isolated_file, isolation_metrics, isolation_plot, log_dir, model_file
from backdoorlab.metrics import isolation_precision_recall
from backdoorlab.models import new_model
from backdoorlab.runner import add_seed, phase, run_stage, stage_parser
from backdoorlab.runtime import Runtime
from backdoorlab.storage import save_arrays, save_checkpoint, save_figure, save_json
from backdoorlab.training import TrainOptions, fit, subset

PARAMS = params.MODEL_KEYS + params.SMOOTHING_KEYS + [
    "isolate.max_epochs", "isolate.lr", "isolate.gamma", "isolate.lga", "isolate.augment", "isolate.selection",
    "isolate.ratio", "isolate.min_concentration", "isolate.window", "isolate.drop", "isolate.min_gap",
    "isolate.finetune_epochs", "isolate.finetune_lr", "isolate.holdout"]
MONITOR_SIZE = 1000


def main(args) -> None:
    attack = check_model_name(args.attack)
    p = params.load(PARAMS)
    cfg = IsolationConfig.from_params(p)
    opts = TrainOptions.from_params(p, seed=args.seed)
    with phase("data"):
        data = training_set(attack)
        rt = Runtime.pick(p["train.precision"], p["train.arch"], opts.batch_size, p["train.threads"])
        x, y = rt.tensors(data.x, data.y)
        monitor = test_sets(attack, rt, MONITOR_SIZE)
    model = rt.prepare(new_model(p["train.arch"], data.x, len(data.classes), args.seed))

    def logger(curves: Curves):
        return lambda m, stats: curves.log({**stats, **monitor.clean_and_attack(m, rt)})

    with Curves(log_dir("isolate", attack, args.seed)) as curves, phase("training"):
        found = isolate(model, x, y, rt, opts, cfg, logger(curves))
    held_out = finetune_holdout(len(data.y), found.indices, p["isolate.holdout"], args.seed)
    rest = np.setdiff1d(np.arange(len(data.y)), np.union1d(found.indices, held_out))
    if p["isolate.finetune_epochs"]:
        with Curves(log_dir("finetune", attack, args.seed)) as curves, phase("training"):
            xr, yr = subset(x, y, rest)
            fit(model, xr, yr, rt, opts.replace(epochs=p["isolate.finetune_epochs"], lr=p["isolate.finetune_lr"],
                                                 schedule="cosine"),
                desc="fine-tune", on_epoch=lambda e, s: logger(curves)(model, s))

    precision, recall = isolation_precision_recall(found.indices, data.poison_indices)
    poisoned = np.zeros(len(data.y), dtype=bool)
    poisoned[data.poison_indices] = True
    cand = found.candidates
    summary = {"selection": cfg.selection, "found": found.found, "isolation_epochs": found.epochs,
               "signal": cand.signal, "suspect_label": cand.label, "concentration": cand.concentration,
               "gap_decades": cand.gap,
               "isolated": int(len(found.indices)), "isolated_share": len(found.indices) / len(data.y),
               "held_out_of_finetuning": int(len(held_out)),
               "poisoned": int(poisoned.sum()), "precision": precision if found.indices.size else None,
               "recall": recall if poisoned.any() else None,
               "mean_loss_poisoned": float(found.losses[poisoned].mean()) if poisoned.any() else None,
               "mean_loss_clean": float(found.losses[~poisoned].mean())}
    save_checkpoint(model_file(attack, args.seed, FINETUNED),
                    model.checkpoint(trained_on=attack, seed=args.seed, isolated=int(len(found.indices))))
    save_arrays(isolated_file(attack, args.seed), indices=found.indices, holdout=held_out, losses=found.losses,
                speed=found.speed, history=found.history)
    save_json(isolation_metrics(attack, args.seed), summary)
    with phase("pictures"):
        among = "fastest" if cand.signal == "speed" else "largest falls in loss"
        verdict = (f"isolated {len(found.indices)} labelled {cand.label} ({cand.concentration:.0%} of the {among} "
                   f"{cfg.ratio:.0%})" if found.found else
                   f"no label stood out among the suspect {cfg.ratio:.0%} (the fastest: {cand.concentration:.0%} "
                   f"label {cand.label} in the last epoch): nothing isolated")
        save_figure(isolation_plot(attack, args.seed), loss_histogram(
            found.losses, data.poison_indices, found.indices,
            f"{attack}, seed {args.seed}: loss after {found.epochs} LGA epochs; {verdict}"))
    print(f"isolate {attack} seed {args.seed}: {summary}")


if __name__ == "__main__":
    parser = stage_parser("isolate", __doc__)
    parser.add_argument("attack", help="an attack whose poison stage has run, e.g. badnets")
    add_seed(parser)
    run_stage(main, parser)
