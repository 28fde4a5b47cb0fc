"""Stage `train_clean` / `train@<attack>`: train a model with no defense.

`clean` trains the reference model on the clean training set; an attack's name
trains on that attack's poisoned training set.

Reads   data/dataset.npz, data/poisoned/<attack>/ ; params train.*
Writes  models/clean.pt or models/<attack>/no_defense.pt
        logs/train/<name>/  per-epoch lr, train loss/accuracy, test accuracy and ASR
        (on a fixed 2,000-image share of the test sets) for `dvc plots show`
"""
from __future__ import annotations

from backdoorlab import params
from backdoorlab.pipeline import (LOGS, MONITOR_SIZE, EpochLog, check_run_name, model_file, new_model,
                                  run_stage, stage_parser, test_sets, training_set)
from backdoorlab.storage import save_checkpoint
from backdoorlab.training import Runtime, TrainingConfig, fit

PARAMS = ["train.arch", "train.epochs", "train.batch_size", "train.lr", "train.schedule", "train.milestones",
          "train.momentum", "train.weight_decay", "train.augment", "train.precision", "train.seed"]


def main(args) -> None:
    name = check_run_name(args.name)
    p = params.load(PARAMS)
    cfg = TrainingConfig.from_params(p)
    data = training_set(name)
    rt = Runtime.pick(cfg.precision)
    model = rt.prepare(new_model(cfg.arch, data.x, len(data.classes), cfg.seed))
    x, y = rt.tensors(data.x, data.y)
    monitor = test_sets(name, rt, MONITOR_SIZE)
    log = EpochLog(LOGS / "train" / name)
    fit(model, x, y, rt, cfg, epochs=p["train.epochs"], lr=p["train.lr"], schedule=p["train.schedule"],
        milestones=p["train.milestones"], desc=f"train {name}",
        on_epoch=lambda epoch, stats: log.log({**stats, **monitor.clean_and_attack(model, rt)}))
    save_checkpoint(model_file(name), model.checkpoint(trained_on=name))
    print(f"train {name}: {monitor.clean_and_attack(model, rt)} -> {model_file(name)}")


if __name__ == "__main__":
    parser = stage_parser("train", __doc__)
    parser.add_argument("name", help="'clean' or a registered attack, e.g. badnets")
    run_stage(main, parser)
