"""Stage `unlearn@<attack>`: ABL stage 2, fine-tune on the rest, then unlearn the isolated examples.

Starts from the isolation model, fine-tunes it on every example *not* isolated
(unlearn.finetune_*), then runs gradient ascent on the isolated ones for
unlearn.epochs at unlearn.lr. CA and ASR are logged before and after every
unlearning epoch, so the trade-off can be read off the curve.

Reads   data/dataset.npz, data/poisoned/<attack>/, data/isolated/<attack>.npz,
        models/<attack>/isolation.pt ; params train.{arch,batch_size,momentum,weight_decay,augment,
        precision,seed}, unlearn.*
Writes  models/<attack>/abl.pt
        logs/finetune/<attack>/, logs/unlearn/<attack>/   per-epoch curves (unlearning: full test sets)
"""
from __future__ import annotations

import numpy as np

from backdoorlab import params
from backdoorlab.abl import unlearn
from backdoorlab.pipeline import (LOGS, MONITOR_SIZE, EpochLog, check_attack_name, isolated_file, load_model,
                                  model_file, require, run_stage, stage_parser, test_sets, training_set)
from backdoorlab.storage import load_arrays, save_checkpoint
from backdoorlab.training import Runtime, TrainingConfig, accuracy_and_loss

PARAMS = params.TRAINING_KEYS + ["unlearn.finetune_epochs", "unlearn.finetune_lr", "unlearn.finetune_milestones",
                                 "unlearn.epochs", "unlearn.lr", "unlearn.batch_size", "unlearn.loss_cap",
                                 "unlearn.clean_ratio"]


def main(args) -> None:
    name = check_attack_name(args.attack)
    p = params.load(PARAMS)
    cfg = TrainingConfig.from_params(p)
    require(isolated_file(name))
    data = training_set(name)
    isolated = load_arrays(isolated_file(name))["indices"]
    rt = Runtime.pick(cfg.precision)
    model = rt.prepare(load_model(model_file(name, "isolation")))
    x, y = rt.tensors(data.x, data.y)
    monitor = test_sets(name, rt, MONITOR_SIZE)
    full = test_sets(name, rt)
    iso_x, iso_y = x[isolated], y[isolated]
    finetune_log, unlearn_log = EpochLog(LOGS / "finetune" / name), EpochLog(LOGS / "unlearn" / name)

    def unlearning_state(stats: dict | None = None) -> dict:
        isolated_fit = accuracy_and_loss(model, iso_x, iso_y, rt)
        return {**(stats or {}), "isolated_acc": isolated_fit["acc"], "isolated_loss": isolated_fit["loss"],
                **full.clean_and_attack(model, rt)}

    def on_finetune_epoch(epoch: int, stats: dict) -> None:
        finetune_log.log({**stats, **monitor.clean_and_attack(model, rt)})
        if epoch == p["unlearn.finetune_epochs"] - 1:
            unlearn_log.log(unlearning_state())  # step 0: before any ascent

    if p["unlearn.finetune_epochs"] == 0:
        unlearn_log.log(unlearning_state())
    unlearn(model, x, y, isolated, rt, cfg, finetune_epochs=p["unlearn.finetune_epochs"],
            finetune_lr=p["unlearn.finetune_lr"], finetune_milestones=p["unlearn.finetune_milestones"],
            epochs=p["unlearn.epochs"], lr=p["unlearn.lr"], batch_size=p["unlearn.batch_size"],
            loss_cap=p["unlearn.loss_cap"], clean_ratio=p["unlearn.clean_ratio"], on_finetune_epoch=on_finetune_epoch,
            on_unlearn_epoch=lambda e, s: unlearn_log.log(unlearning_state(s)))
    save_checkpoint(model_file(name, "abl"), model.checkpoint(trained_on=name, defense="abl"))
    print(f"unlearn {name}: {full.clean_and_attack(model, rt)} "
          f"({int(np.size(isolated))} isolated examples unlearned) -> {model_file(name, 'abl')}")


if __name__ == "__main__":
    parser = stage_parser("unlearn", __doc__)
    parser.add_argument("attack", help="a registered attack, e.g. badnets")
    run_stage(main, parser)
