"""Stage `isolate@<attack>`: ABL stage 1, isolate the examples the model learns suspiciously fast.

Trains a fresh model on the poisoned training set with the LGA loss (gamma floor)
for isolate.epochs, ranks every training example by its loss (eval mode, no
augmentation) and isolates the lowest isolate.ratio of them.

Reads   data/dataset.npz, data/poisoned/<attack>/ ; params train.{arch,batch_size,momentum,
        weight_decay,augment,precision,seed}, isolate.*
Writes  models/<attack>/isolation.pt       the LGA-trained model (unlearning starts from it)
        data/isolated/<attack>.npz         isolated indices and every example's loss
        metrics/isolation/<attack>.json    isolation precision and recall against the true poison indices
        plots/isolation/<attack>.png       loss histogram, clean vs poisoned, with the cut-off
        logs/isolate/<attack>/             per-epoch curves
"""
from __future__ import annotations

import numpy as np

from backdoorlab import params
from backdoorlab.abl import isolate_lowest, train_isolation_model
from backdoorlab.gallery import loss_histogram
from backdoorlab.metrics import isolation_precision_recall
from backdoorlab.pipeline import (LOGS, METRICS, MONITOR_SIZE, PLOTS, EpochLog, check_attack_name, isolated_file,
                                  model_file, new_model, run_stage, stage_parser, test_sets, training_set)
from backdoorlab.storage import save_arrays, save_checkpoint, save_figure, save_json
from backdoorlab.training import Runtime, TrainingConfig, per_example_losses

PARAMS = params.TRAINING_KEYS + ["isolate.epochs", "isolate.lr", "isolate.schedule", "isolate.gamma", "isolate.ratio", "isolate.lga"]


def main(args) -> None:
    name = check_attack_name(args.attack)
    p = params.load(PARAMS)
    cfg = TrainingConfig.from_params(p)
    data = training_set(name)
    rt = Runtime.pick(cfg.precision)
    model = rt.prepare(new_model(cfg.arch, data.x, len(data.classes), cfg.seed))
    x, y = rt.tensors(data.x, data.y)
    monitor = test_sets(name, rt, MONITOR_SIZE)
    log = EpochLog(LOGS / "isolate" / name)
    train_isolation_model(model, x, y, rt, cfg, epochs=p["isolate.epochs"], lr=p["isolate.lr"],
                          gamma=p["isolate.gamma"], per_example=p["isolate.lga"] == "per_example",
                          schedule=p["isolate.schedule"],
                          on_epoch=lambda e, s: log.log({**s, **monitor.clean_and_attack(model, rt)}))

    losses = per_example_losses(model, x, y, rt).cpu().numpy()
    isolated = isolate_lowest(losses, p["isolate.ratio"])
    precision, recall = isolation_precision_recall(isolated, data.poison_indices)
    poisoned = np.zeros(len(losses), dtype=bool)
    poisoned[data.poison_indices] = True
    summary = {"isolated": int(len(isolated)), "poisoned": int(poisoned.sum()),
               "precision": precision, "recall": recall,
               "mean_loss_poisoned": float(losses[poisoned].mean()) if poisoned.any() else None,
               "mean_loss_clean": float(losses[~poisoned].mean())}

    save_checkpoint(model_file(name, "isolation"), model.checkpoint(trained_on=name, loss="lga"))
    save_arrays(isolated_file(name), indices=isolated, losses=losses)
    save_json(METRICS / "isolation" / f"{name}.json", summary)
    save_figure(PLOTS / "isolation" / f"{name}.png", loss_histogram(
        losses, data.poison_indices, isolated,
        f"{name}: loss after {p['isolate.epochs']} LGA epochs (gamma {p['isolate.gamma']}); "
        f"isolated {len(isolated)}, precision {precision:.3f}"))
    print(f"isolate {name}: {summary}")


if __name__ == "__main__":
    parser = stage_parser("isolate", __doc__)
    parser.add_argument("attack", help="a registered attack, e.g. badnets")
    run_stage(main, parser)
